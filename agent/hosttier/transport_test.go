package hosttier

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startProcess starts an agent with exactly args and stops it at the end of the test.
func startProcess(t *testing.T, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	cmd.Env = append(cmd.Env, noConf...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(ioTimeout):
			cmd.Process.Kill()
			<-exited
		}
	})
	return stderr
}

// syncHandshake is the host side of the reference protocol's resynchronisation: send 0xFF and
// guest-sync-delimited until a reply with the sentinel and our id arrives. It is how a host
// talks to an agent whose start it cannot observe (the agent drops input at open).
func syncHandshake(t *testing.T, rw interface {
	Write([]byte) (int, error)
	SetReadDeadline(time.Time) error
}, r *bufio.Reader) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for id := 1; ; id++ {
		if time.Now().After(deadline) {
			t.Fatal("no answer to guest-sync-delimited")
		}
		fmt.Fprintf(rw, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}", id)
		rw.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			if _, err := r.ReadBytes(0xff); err != nil {
				break
			}
			line, err := r.ReadString('\n')
			if err != nil {
				break
			}
			if line == fmt.Sprintf("{\"return\": %d}\n", id) {
				rw.SetReadDeadline(time.Now().Add(ioTimeout))
				return
			}
		}
	}
}

type ptyMaster struct{ f *os.File }

func (p ptyMaster) Write(b []byte) (int, error)       { return p.f.Write(b) }
func (p ptyMaster) SetReadDeadline(t time.Time) error { return p.f.SetReadDeadline(t) }

// isa-serial on a pty: raw line, flushed input, and the usual replies.
func TestISASerial(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
			if err != nil {
				t.Skipf("no pty: %v", err)
			}
			master := os.NewFile(uintptr(mfd), "ptmx")
			defer master.Close()
			if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
				t.Fatal(err)
			}
			n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
			if err != nil {
				t.Fatal(err)
			}
			slave := fmt.Sprintf("/dev/pts/%d", n)
			// Hold the slave open in raw mode so that nothing is echoed before the agent
			// has set the line up, and so that the line survives between opens.
			sfd, err := unix.Open(slave, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(sfd)
			tio, err := unix.IoctlGetTermios(sfd, unix.TCGETS)
			if err != nil {
				t.Fatal(err)
			}
			tio.Lflag &^= unix.ICANON | unix.ECHO | unix.ISIG
			tio.Oflag &^= unix.OPOST
			if err := unix.IoctlSetTermios(sfd, unix.TCSETS, tio); err != nil {
				t.Fatal(err)
			}

			dir := t.TempDir()
			startProcess(t, exec.Command(a.Bin, "-m", "isa-serial", "-p", slave, "-t", dir))
			r := bufio.NewReader(master)
			syncHandshake(t, ptyMaster{master}, r)
			master.Write([]byte(ping + syncReq("5")))
			for _, want := range []string{pong + "\n", "{\"return\": 5}\n"} {
				line, err := r.ReadString('\n')
				if err != nil || line != want {
					t.Fatalf("reply %q (%v), want %q", line, err, want)
				}
			}
			tio, _ = unix.IoctlGetTermios(sfd, unix.TCGETS)
			if tio.Cflag&unix.CBAUD != unix.B38400 {
				t.Errorf("line speed bits %#x, want B38400", tio.Cflag&unix.CBAUD)
			}
		})
	}
}

// systemd socket activation: a listening socket on fd 3 replaces -m and -p.
func TestSocketActivation(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "qga-sa-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			sock := filepath.Join(dir, "activated")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			lf, _ := l.(*net.UnixListener).File()
			l.Close()
			defer lf.Close()
			// LISTEN_PID must be the agent's own pid: let a shell set it and exec the agent.
			cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`,
				a.Bin, "-t", dir, "-m", "virtio-serial", "-p", "/nonexistent/port")
			cmd.Env = os.Environ()
			cmd.ExtraFiles = []*os.File{lf}
			stderr := startProcess(t, cmd)
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioTimeout))
			c.Write([]byte(ping))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != pong+"\n" {
				t.Fatalf("reply %q (%v); stderr:\n%s", line, err, stderr.String())
			}
		})
	}
}

// Ours creates the unix socket with mode 0600 whatever the umask: only root may talk to the
// agent. (The reference leaves the mode to the umask.)
func TestUnixSocketMode(t *testing.T) {
	f := Start(t, Ours())
	st, err := os.Stat(f.Sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", st.Mode(), err)
	}
	// A second agent replaces a stale socket left by the first.
	f.Kill()
	f.Launch()
	f.Connect()
	if r := f.Call(ping); !bytes.Equal(r.Raw, []byte(pong+"\n")) {
		t.Fatalf("reply %q", r.Raw)
	}
}
