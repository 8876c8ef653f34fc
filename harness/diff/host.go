package diff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/qgakit/qgakit/harness/qga"
)

// HostAgent is an agent running on the host in unix-listen mode, the way QEMU's test-qga.c
// runs qemu-ga: "-m unix-listen -p <dir>/sock -t <dir>/state", with its own scratch directory
// <dir>/files for the corpus's file commands.
type HostAgent struct {
	// Target is the connected agent.
	Target *Target
	// Dir holds the socket, the state dir, the scratch files and the agent's log.
	Dir string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // the process's exit, once exited is closed
	out    *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartHost starts bin in dir (created if needed) and returns it connected and synchronised.
func StartHost(ctx context.Context, name, bin, dir string) (*HostAgent, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", bin, err)
	}
	files := filepath.Join(dir, "files")
	state := filepath.Join(dir, "state")
	for _, d := range []string{files, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("agent %s: %w", name, err)
		}
	}
	sock := filepath.Join(dir, "sock")
	h := &HostAgent{Dir: dir, exited: make(chan struct{}), out: &lockedBuffer{}}
	// -l keeps the agents' logs apart from the report; stdout and stderr are kept for errors.
	h.cmd = exec.Command(abs, "-m", "unix-listen", "-p", sock, "-t", state, "-l", filepath.Join(dir, "agent.log"))
	h.cmd.Dir = dir
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent %s (%s): %w", name, bin, err)
	}
	go func() {
		h.err = h.cmd.Wait()
		close(h.exited)
	}()
	client, err := h.dial(ctx, sock)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("agent %s (%s): %w", name, bin, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := client.SyncUntil(sctx, 2*time.Second); err != nil {
		client.Close()
		h.Close()
		return nil, fmt.Errorf("agent %s (%s): %w; output: %s", name, bin, err, h.out.String())
	}
	h.Target = &Target{Name: name, Bin: bin, Client: client, Tmp: files}
	return h, nil
}

// dial waits for the agent to listen: the socket appears after the process started, and
// nothing announces it, so the dial is retried until it works, the agent exits or ctx ends.
func (h *HostAgent) dial(ctx context.Context, sock string) (*qga.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := qga.Dial(dctx, sock)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			var op *net.OpError
			if !errors.As(err, &op) {
				return nil, err
			}
		}
		select {
		case <-h.exited:
			why := "exit status 0"
			if h.err != nil {
				why = h.err.Error()
			}
			return nil, fmt.Errorf("exited before listening (%s): %s", why, h.out.String())
		case <-dctx.Done():
			return nil, fmt.Errorf("no socket at %s: %w", sock, context.Cause(dctx))
		case <-tick.C:
		}
	}
}

// Output is what the agent wrote to stdout and stderr.
func (h *HostAgent) Output() string { return h.out.String() }

// Close disconnects and stops the agent: SIGTERM, then SIGKILL if it is still there after 5 s.
func (h *HostAgent) Close() error {
	if h.Target != nil {
		h.Target.Client.Close()
	}
	select {
	case <-h.exited:
		return nil
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-h.exited:
		return nil
	case <-t.C:
		_ = h.cmd.Process.Kill()
		<-h.exited
		return fmt.Errorf("agent %s did not stop on SIGTERM", h.cmd.Path)
	}
}
