package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/qmp"
)

var (
	timeLongAgo = time.Unix(1, 0)
	timeZero    time.Time
)

// closeTimeout bounds how long Close waits for a SIGKILLed QEMU to be reaped.
const closeTimeout = 30 * time.Second

// VM is a running (or exited) QEMU. Create it with Start; always Close it.
type VM struct {
	cfg  *config
	dir  string
	argv []string // full command line, binary first
	log  io.Writer

	cmd    *exec.Cmd
	pid    int
	exited chan struct{} // closed when the process has been reaped
	state  *os.ProcessState
	output *cappedBuffer // QEMU's stdout and stderr

	qmp     *qmp.Monitor
	serial  *serialLog
	console *Console
	sconn   net.Conn // our end of ttyS0

	amu         sync.Mutex
	agent       *qga.Client
	oldAgentTrs []*qga.Transcript // transcripts of detached agent clients, for Artifacts

	closeOnce sync.Once
	closeErr  error
}

// Start builds the command line, starts QEMU and connects QMP. ctx bounds the start only; the
// VM lives until Stop, Close, a signal, or the guest powering off.
func Start(ctx context.Context, opts ...Option) (*VM, error) {
	return start(ctx, newConfig(opts))
}

// newConfig applies opts to the defaults.
func newConfig(opts []Option) *config {
	cfg := defaults()
	for _, o := range opts {
		o(cfg)
	}
	return cfg
}

// start is Start from a finished configuration (Restore makes its own).
func start(ctx context.Context, cfg *config) (*VM, error) {
	if cfg.log == nil {
		cfg.log = io.Discard
	}
	sweepStale(cfg.tempRoot)

	dir, err := os.MkdirTemp(cfg.tempRoot, "qgakit-")
	if err != nil {
		return nil, fmt.Errorf("vm: make temp dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("vm: write owner file: %w", err)
	}
	v := &VM{cfg: cfg, dir: dir, log: cfg.log, exited: make(chan struct{}), output: &cappedBuffer{max: 1 << 20}}
	register(v)
	if err := v.boot(ctx); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// boot does the work of Start on a registered VM; Start closes it on failure.
func (v *VM) boot(ctx context.Context) error {
	dir := v.dir

	disks, err := v.cfg.resolveDisks(ctx, dir)
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	args, err := v.cfg.qemuArgs(dir, disks)
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	bin, err := exec.LookPath(v.cfg.qemu)
	if err != nil {
		return fmt.Errorf("vm: %w (scripts/install-deps.sh e2e installs QEMU)", err)
	}
	v.argv = append([]string{bin}, args...)

	// The QMP socket exists before QEMU starts (QEMU gets the listening fd), so the dial below
	// cannot race QEMU's start-up.
	qmpPath := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", qmpPath)
	if err != nil {
		return fmt.Errorf("vm: listen on %s: %w", qmpPath, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	qmpFile, err := ln.(*net.UnixListener).File()
	ln.Close() // QEMU's copy is the only listener left: if QEMU dies, dialling fails
	if err != nil {
		return fmt.Errorf("vm: qmp listener fd: %w", err)
	}
	defer qmpFile.Close()
	serialHost, serialQEMU, err := socketpair()
	if err != nil {
		return fmt.Errorf("vm: ttyS0 socketpair: %w", err)
	}
	defer serialQEMU.Close()
	v.sconn = serialHost
	consoleHost, consoleQEMU, err := socketpair()
	if err != nil {
		return fmt.Errorf("vm: ttyS1 socketpair: %w", err)
	}
	defer consoleQEMU.Close()
	v.console = newConsole(consoleHost)

	serialFile, err := os.Create(filepath.Join(dir, "serial0.log"))
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	v.serial = newSerialLog(serialFile, v.log, v.cfg.name+" ttyS0:")
	go v.serial.run(serialHost)

	qemuLog, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdin = nil
	out := io.MultiWriter(qemuLog, v.output)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{qmpFile, serialQEMU, consoleQEMU} // fds 3, 4, 5
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group, so that Kill also reaches what QEMU spawns (exec: migration's sh).
		Setpgid: true,
		// QEMU dies with the harness even when the harness is SIGKILLed.
		Pdeathsig: syscall.SIGKILL,
	}
	v.cmd = cmd
	fmt.Fprintf(v.log, "%s %s qemu: %s\n", time.Now().Format("15:04:05.000"), v.cfg.name, shellJoin(v.argv))
	if err := v.startProcess(qemuLog); err != nil {
		qemuLog.Close()
		return fmt.Errorf("vm: start %s: %w", bin, err)
	}

	// Connecting fails fast when QEMU exits (its listener goes away).
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-v.exited:
			cancel()
		case <-dctx.Done():
		}
	}()
	m, err := qmp.Dial(dctx, qmpPath)
	if err != nil {
		// Most often QEMU refused its command line or aborted: wait for it to be reaped, so
		// that the error can say what QEMU said.
		select {
		case <-v.exited:
			return fmt.Errorf("vm: QEMU exited (%v) before QMP answered: %s", v.state, bytes.TrimSpace(v.output.Bytes()))
		case <-time.After(5 * time.Second):
		}
		return fmt.Errorf("vm: %w", err)
	}
	v.qmp = m
	v.logf("started pid %d in %s (QEMU %s)", v.pid, dir, m.Version())
	return nil
}

// startProcess starts QEMU and reaps it from a goroutine locked to its OS thread: the
// parent-death signal fires when the thread that forked the child exits, and a locked thread
// lives exactly as long as that goroutine, which is as long as QEMU.
func (v *VM) startProcess(qemuLog *os.File) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := v.cmd.Start(); err != nil {
			started <- err
			return
		}
		v.pid = v.cmd.Process.Pid
		started <- nil
		_ = v.cmd.Wait()
		v.state = v.cmd.ProcessState
		qemuLog.Close()
		close(v.exited)
	}()
	return <-started
}

func (v *VM) logf(format string, a ...any) {
	fmt.Fprintf(v.log, "%s %s %s\n", time.Now().Format("15:04:05.000"), v.cfg.name, fmt.Sprintf(format, a...))
}

// Dir is the VM's temp dir (sockets, overlays, logs); it is removed by Close.
func (v *VM) Dir() string { return v.dir }

// Pid is QEMU's process id.
func (v *VM) Pid() int { return v.pid }

// CommandLine is the full QEMU command line, binary first.
func (v *VM) CommandLine() []string { return append([]string(nil), v.argv...) }

// QMP is the VM's monitor.
func (v *VM) QMP() *qmp.Monitor { return v.qmp }

// Console is the console shell on ttyS1.
func (v *VM) Console() *Console { return v.console }

// DiskPath is the file QEMU opened for the disk with this node name (the overlay for an
// Overlay disk), or "" when there is no such disk.
func (v *VM) DiskPath(node string) string {
	for i, d := range v.cfg.disks {
		n := d.Node
		if n == "" {
			n = "disk" + strconv.Itoa(i)
		}
		if n == node {
			if d.Overlay {
				return filepath.Join(v.dir, n+".qcow2")
			}
			p, _ := filepath.Abs(d.Path)
			return p
		}
	}
	return ""
}

// SerialMark is the current end of the ttyS0 log, for WaitSerialAfter.
func (v *VM) SerialMark() int64 { return v.serial.mark() }

// WaitSerial waits until substr appears anywhere in the ttyS0 log (earlier output included) and
// returns the position just past it.
func (v *VM) WaitSerial(ctx context.Context, substr string) (int64, error) {
	return v.serial.wait(ctx, 0, substr)
}

// WaitSerialAfter is WaitSerial for output at or after position from (see SerialMark).
func (v *VM) WaitSerialAfter(ctx context.Context, from int64, substr string) (int64, error) {
	return v.serial.wait(ctx, from, substr)
}

// SerialLog returns the ttyS0 output kept in memory (the last 32 MiB).
func (v *VM) SerialLog() []byte { return v.serial.bytes() }

// Exited is closed once the QEMU process has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Wait waits for QEMU to exit on its own (a guest power-off without -no-shutdown, an S4
// hibernation) and returns its state: ExitCode() is 0 for a clean exit.
func (v *VM) Wait(ctx context.Context) (*os.ProcessState, error) {
	select {
	case <-v.exited:
		return v.state, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("vm: wait for QEMU to exit: %w", context.Cause(ctx))
	}
}

// Stop ends QEMU gracefully (QMP quit), killing its process group if it has not exited when ctx
// ends. It returns the process state. The VM's files stay until Close.
func (v *VM) Stop(ctx context.Context) (*os.ProcessState, error) {
	select {
	case <-v.exited:
		return v.state, nil
	default:
	}
	var quitErr error
	if v.qmp != nil {
		quitErr = v.qmp.Quit(ctx)
	}
	select {
	case <-v.exited:
		return v.state, nil
	case <-ctx.Done():
	}
	v.Kill()
	<-v.exited
	if quitErr != nil {
		return v.state, fmt.Errorf("vm: quit failed (%w), killed", quitErr)
	}
	return v.state, fmt.Errorf("vm: QEMU did not exit after quit: %w; killed", context.Cause(ctx))
}

// Kill sends SIGKILL to QEMU's process group. It does not wait.
func (v *VM) Kill() {
	if v.pid <= 0 {
		return
	}
	select {
	case <-v.exited:
		return
	default:
	}
	_ = unix.Kill(-v.pid, unix.SIGKILL)
}

// Close kills QEMU if it still runs, closes every connection and removes the VM's dir. It is
// safe to call more than once and from cleanup hooks; Artifacts still works afterwards.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		v.Kill()
		if v.cmd != nil && v.pid > 0 {
			select {
			case <-v.exited:
			case <-time.After(closeTimeout):
				v.closeErr = fmt.Errorf("vm: QEMU pid %d not reaped %v after SIGKILL", v.pid, closeTimeout)
			}
		}
		v.amu.Lock()
		if v.agent != nil {
			v.agent.Close()
		}
		v.amu.Unlock()
		if v.qmp != nil {
			v.qmp.Close()
		}
		if v.console != nil {
			v.console.conn.Close()
		}
		if v.sconn != nil {
			v.sconn.Close()
		}
		if err := os.RemoveAll(v.dir); err != nil && v.closeErr == nil {
			v.closeErr = fmt.Errorf("vm: remove %s: %w", v.dir, err)
		}
		unregister(v)
		select {
		case <-v.exited:
			v.logf("closed (%v)", v.state)
		default:
		}
	})
	return v.closeErr
}

// cappedBuffer keeps the last max bytes written to it.
type cappedBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.b = append(c.b, p...)
	if over := len(c.b) - c.max; over > 0 {
		c.b = append(c.b[:0], c.b[over:]...)
	}
	return len(p), nil
}

func (c *cappedBuffer) Bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.b...)
}

// socketpair returns a connected pair: a net.Conn for the harness and an *os.File for QEMU.
func socketpair() (net.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	hf := os.NewFile(uintptr(fds[0]), "host")
	defer hf.Close()
	conn, err := net.FileConn(hf)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return conn, os.NewFile(uintptr(fds[1]), "qemu"), nil
}
