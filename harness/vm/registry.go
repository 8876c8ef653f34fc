package vm

import (
	"bytes"
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The registry of live VMs, so that an interrupted run leaves nothing behind.
//
// On SIGINT or SIGTERM every live VM's process group is killed and its dir removed at once
// (artifacts are kept in memory, so failure hooks that run afterwards still have them). The
// handler does not exit the process: Ginkgo handles the interrupt itself (it runs cleanup and
// reports), and a second signal after the handler ran gets the default action again (the
// handler unregisters itself until the next VM starts). A test binary killed outright is covered
// by the parent-death signal of each QEMU and by sweepStale.
var registry struct {
	mu      sync.Mutex
	live    map[*VM]struct{}
	signals chan os.Signal
}

func register(v *VM) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.live == nil {
		registry.live = map[*VM]struct{}{}
	}
	registry.live[v] = struct{}{}
	if registry.signals == nil {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		registry.signals = ch
		go onSignal(ch)
	}
}

func unregister(v *VM) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	delete(registry.live, v)
}

func onSignal(ch chan os.Signal) {
	if _, ok := <-ch; !ok {
		return
	}
	registry.mu.Lock()
	signal.Stop(ch)
	registry.signals = nil
	live := liveLocked()
	registry.mu.Unlock()
	for _, v := range live {
		v.Kill()
		os.RemoveAll(v.dir)
	}
	if afterSignal != nil {
		afterSignal()
	}
}

// afterSignal lets tests observe that the signal handler has finished.
var afterSignal func()

// CloseAll closes every live VM of this process (for an AfterSuite or TestMain safety net).
func CloseAll() {
	registry.mu.Lock()
	live := liveLocked()
	registry.mu.Unlock()
	for _, v := range live {
		v.Close()
	}
}

// liveLocked lists the live VMs for a caller that holds registry.mu, to act on after it lets
// the lock go: Close unregisters the VM, which takes the lock.
func liveLocked() []*VM {
	live := make([]*VM, 0, len(registry.live))
	for v := range registry.live {
		live = append(live, v)
	}
	return live
}

// Live returns how many VMs of this process are not closed yet.
func Live() int {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	return len(registry.live)
}

// sweepStale removes the dirs of VMs whose owning harness process is gone (killed before it
// could clean up), and kills their QEMU if the parent-death signal somehow did not.
func sweepStale(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, "qgakit-*"))
	for _, dir := range dirs {
		owner, err := readPid(filepath.Join(dir, "owner"))
		if err != nil || processAlive(owner) {
			continue // not ours to judge, or its owner still runs
		}
		if qpid, err := readPid(filepath.Join(dir, "qemu.pid")); err == nil && processAlive(qpid) {
			// Guard against pid reuse: only a process that runs with this dir's files.
			if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(qpid) + "/cmdline"); err == nil &&
				bytes.Contains(cmdline, []byte(dir+"/")) {
				_ = unix.Kill(qpid, unix.SIGKILL)
			}
		}
		os.RemoveAll(dir)
	}
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, errors.New("bad pid file")
	}
	return pid, nil
}

func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
