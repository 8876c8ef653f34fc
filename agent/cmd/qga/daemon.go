package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/qgakit/qgakit/agent/internal/errtext"
	"golang.org/x/sys/unix"
)

// daemonEnv marks the re-executed child of -d and names its readiness pipe. Go cannot fork,
// so -d starts the same binary again in a new session and waits until it serves or fails.
const daemonEnv = "QGA_DAEMON_READY_FD"

// becomeDaemon returns the readiness pipe in the daemon child. In the parent it starts the
// child, waits for its verdict and exits: 0 once the child serves, 1 when it failed.
func becomeDaemon() (*readiness, error) {
	if v := os.Getenv(daemonEnv); v != "" {
		os.Unsetenv(daemonEnv)
		fd, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("bad %s=%q", daemonEnv, v)
		}
		// The reference's become_daemon: umask 077, its own session (set by the parent),
		// working directory "/", standard streams on /dev/null (set by the parent).
		unix.Umask(0o077)
		return &readiness{f: os.NewFile(uintptr(fd), "daemon-ready")}, nil
	}

	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create readiness pipe: %w", err)
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	if strings.TrimSpace(line) == "ok" {
		// The child keeps running on its own; it is not reaped here.
		os.Exit(0)
	}
	_ = cmd.Wait()
	if msg, ok := strings.CutPrefix(strings.TrimSpace(line), "failed: "); ok {
		fmt.Fprintln(os.Stderr, msg)
	}
	os.Exit(1)
	return nil, nil
}

// pidFile is a pidfile this process wrote and holds locked.
type pidFile struct {
	f    *os.File
	path string
}

// writePidfile is QEMU's qemu_write_pidfile: create, take a write lock without waiting (a
// second agent fails here), make sure the locked file is still the one at path, then write
// the pid. The lock lasts as long as the process.
func writePidfile(path string) (*pidFile, error) {
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("Cannot open pid file: %s", errtext.Strerror(err))
		}
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
		if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
			f.Close()
			return nil, fmt.Errorf("Cannot lock pid file: %s", errtext.Strerror(err))
		}
		held, err1 := f.Stat()
		now, err2 := os.Stat(path)
		if err1 != nil || err2 != nil && !errors.Is(err2, fs.ErrNotExist) {
			f.Close()
			return nil, fmt.Errorf("Cannot stat file: %s", errtext.Strerror(errors.Join(err1, err2)))
		}
		if err2 != nil || !os.SameFile(held, now) {
			// Someone replaced or removed the file between open and lock: lock the new one.
			f.Close()
			continue
		}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, fmt.Errorf("Failed to truncate pid file: %s", errtext.Strerror(err))
		}
		if _, err := fmt.Fprintf(f, "%d\n", os.Getpid()); err != nil {
			f.Close()
			return nil, fmt.Errorf("Failed to write pid file: %s", errtext.Strerror(err))
		}
		return &pidFile{f: f, path: path}, nil
	}
}

func (p *pidFile) remove() {
	os.Remove(p.path)
	p.f.Close()
}
