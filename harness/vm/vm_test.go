package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/harness/qmp"
)

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (scripts/install-deps.sh e2e)")
	}
}

// lockedBuffer is a log writer that tests can read while the VM writes.
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

// waitGone waits until pid has exited, through a pidfd (the process need not be our child).
func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(timeout.Milliseconds()))
	if err != nil || n != 1 {
		t.Fatalf("process %d still alive after %v (%v)", pid, timeout, err)
	}
}

// A VM without a kernel or disk: the firmware finds nothing to boot and idles, which is all the
// lifecycle needs.
func TestStartStopClose(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var log lockedBuffer
	root := t.TempDir()
	v, err := Start(ctx, WithLog(&log), WithTempRoot(root), WithName("life"), WithMemory(128))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if Live() != 1 {
		t.Errorf("Live() = %d with one VM", Live())
	}
	if st, err := v.QMP().Status(ctx); err != nil || st != "running" {
		t.Errorf("status = %q, %v", st, err)
	}
	for _, f := range []string{"qmp.sock", "owner", "qemu.pid", "serial0.log", "qemu.log"} {
		if _, err := os.Stat(filepath.Join(v.Dir(), f)); err != nil {
			t.Errorf("VM dir lacks %s: %v", f, err)
		}
	}
	if pid, err := readPid(filepath.Join(v.Dir(), "qemu.pid")); err != nil || pid != v.Pid() {
		t.Errorf("pidfile says %d (%v), process is %d", pid, err, v.Pid())
	}
	if !strings.Contains(log.String(), "qemu: ") || !strings.Contains(log.String(), "virtio-serial-pci,id=vser0") {
		t.Errorf("the command line was not logged:\n%s", log.String())
	}
	st, err := v.Stop(ctx)
	if err != nil || st.ExitCode() != 0 {
		t.Fatalf("Stop = %v, %v; want exit 0", st, err)
	}
	if _, err := v.QMP().WaitEvent(ctx, "SHUTDOWN", func(e qmp.Event) bool { return e.Str("reason") == "host-qmp-quit" }); err != nil {
		t.Errorf("no SHUTDOWN host-qmp-quit: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := os.Stat(v.Dir()); !os.IsNotExist(err) {
		t.Errorf("VM dir still there after Close: %v", err)
	}
	if Live() != 0 {
		t.Errorf("Live() = %d after Close", Live())
	}
	if err := unix.Kill(v.Pid(), 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("QEMU pid %d still exists: %v", v.Pid(), err)
	}

	art := filepath.Join(t.TempDir(), "artifacts")
	if err := v.Artifacts(art); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"qemu-cmdline.txt": "-machine q35,accel=",
		"qmp.log":          `"execute":"quit"`,
		"status.txt":       "exit: exit status 0",
		"qga.log":          "",
		"serial0.log":      "",
		"console.log":      "",
		"qemu-output.log":  "",
	} {
		b, err := os.ReadFile(filepath.Join(art, name))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("artifact %s = %q, %v; want it to contain %q", name, b, err, want)
		}
	}
}

func TestStartFailureLeavesNothing(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	root := t.TempDir()
	v, err := Start(ctx, WithLog(&lockedBuffer{}), WithTempRoot(root), WithQEMUArgs("-no-such-option"))
	if err == nil {
		v.Close()
		t.Fatal("Start with a bad QEMU option succeeded")
	}
	if !strings.Contains(err.Error(), "no-such-option") {
		t.Errorf("error does not carry QEMU's complaint: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "qgakit-*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
	if Live() != 0 {
		t.Errorf("Live() = %d after a failed start", Live())
	}
}

func TestStopKillsAHungQEMU(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := Start(ctx, WithLog(&lockedBuffer{}), WithTempRoot(t.TempDir()), WithMemory(128))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	// A stopped process answers nothing, like a QEMU wedged in the kernel.
	if err := unix.Kill(v.Pid(), unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	st, err := v.Stop(short)
	if err == nil || st == nil || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("Stop of a hung QEMU = %v, %v; want an error and death by SIGKILL", st, err)
	}
}

func TestWaitReturnsTheExitStatus(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := Start(ctx, WithLog(&lockedBuffer{}), WithTempRoot(t.TempDir()), WithMemory(128))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if _, err := v.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a running VM = %v", err)
	}
	// QEMU exits by itself, as after a guest power-off.
	if err := v.QMP().Execute(ctx, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	st, err := v.Wait(ctx)
	if err != nil || st.ExitCode() != 0 {
		t.Errorf("Wait = %v, %v", st, err)
	}
	if _, _, err := v.Console().Run(ctx, "true"); err == nil {
		t.Error("console command on an exited VM succeeded")
	}
	if _, err := v.WaitSerialAfter(ctx, v.SerialMark(), "x"); err == nil {
		t.Error("serial wait on an exited VM succeeded")
	}
}

// The helper process: a harness that starts a VM and is then killed or signalled.
func TestHelperProcess(t *testing.T) {
	root := os.Getenv("QGAKIT_VM_HELPER_ROOT")
	if root == "" {
		t.Skip("only run as a helper process")
	}
	afterSignal = func() {
		fmt.Println("cleaned")
		os.Exit(0)
	}
	v, err := Start(context.Background(), WithLog(&lockedBuffer{}), WithTempRoot(root), WithMemory(128))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(v.Pid(), v.Dir())
	select {}
}

func startHelper(t *testing.T, root string) (*exec.Cmd, *bufio.Reader, int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "QGAKIT_VM_HELPER_ROOT="+root)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	var pid int
	var dir string
	if _, serr := fmt.Sscan(line, &pid, &dir); err != nil || serr != nil {
		t.Fatalf("helper said %q (%v)", line, err)
	}
	return cmd, r, pid, dir
}

func TestKilledHarnessLeavesNothing(t *testing.T) {
	needQEMU(t)
	root := t.TempDir()
	helper, _, qpid, dir := startHelper(t, root)
	if err := helper.Process.Kill(); err != nil { // SIGKILL: no cleanup code runs
		t.Fatal(err)
	}
	helper.Wait()
	waitGone(t, qpid, 30*time.Second) // the parent-death signal
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("expected the dead harness's dir to remain for the sweep: %v", err)
	}
	sweepStale(root)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("sweep left %s: %v", dir, err)
	}
}

func TestSignalKillsVMs(t *testing.T) {
	needQEMU(t)
	root := t.TempDir()
	helper, out, qpid, dir := startHelper(t, root)
	if err := helper.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	line, err := out.ReadString('\n')
	if err != nil || line != "cleaned\n" {
		t.Fatalf("helper said %q, %v after SIGTERM", line, err)
	}
	helper.Wait()
	waitGone(t, qpid, 30*time.Second)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("signal handler left %s: %v", dir, err)
	}
}

func TestSweepSparesLiveOwners(t *testing.T) {
	root := t.TempDir()
	mine := filepath.Join(root, "qgakit-live")
	foreign := filepath.Join(root, "qgakit-noowner")
	for _, err := range []error{
		os.Mkdir(mine, 0o700),
		os.WriteFile(filepath.Join(mine, "owner"), []byte(fmt.Sprint(os.Getpid())), 0o600),
		os.Mkdir(foreign, 0o700),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	sweepStale(root)
	for _, d := range []string{mine, foreign} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("sweep removed %s: %v", d, err)
		}
	}
}

// fakeTB is enough of a testing.TB to drive StartT's cleanup by hand.
type fakeTB struct {
	name     string
	failed   bool
	cleanups []func()
	logs     []string
}

func (f *fakeTB) Helper()                   {}
func (f *fakeTB) Name() string              { return f.name }
func (f *fakeTB) Failed() bool              { return f.failed }
func (f *fakeTB) Cleanup(fn func())         { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Logf(s string, a ...any)   { f.logs = append(f.logs, fmt.Sprintf(s, a...)) }
func (f *fakeTB) Fatalf(s string, a ...any) { panic(fmt.Sprintf(s, a...)) }
func (f *fakeTB) cleanup() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestStartTWritesArtifactsOnFailure(t *testing.T) {
	needQEMU(t)
	arts := t.TempDir()
	t.Setenv("ARTIFACTS", arts)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, failed := range []bool{false, true} {
		tb := &fakeTB{name: fmt.Sprintf("Suite/spec failed=%v: it's [odd]", failed)}
		v := StartT(tb, ctx, WithTempRoot(t.TempDir()), WithMemory(128))
		if !strings.Contains(strings.Join(tb.logs, "\n"), "qemu: ") {
			t.Errorf("the command line did not reach tb.Logf: %q", tb.logs)
		}
		tb.failed = failed
		tb.cleanup()
		if _, err := os.Stat(v.Dir()); !os.IsNotExist(err) {
			t.Errorf("StartT cleanup left %s", v.Dir())
		}
		dir := ArtifactDir(arts, tb.name)
		_, err := os.Stat(filepath.Join(dir, "qemu-cmdline.txt"))
		if failed && err != nil {
			t.Errorf("no artifacts for a failed test in %s: %v", dir, err)
		}
		if !failed && err == nil {
			t.Errorf("artifacts written for a passing test")
		}
	}
	if got := ArtifactDir("/a", "Suite/spec failed=true: it's [odd]"); got != "/a/Suite_spec_failed_true_it_s_odd" {
		t.Errorf("ArtifactDir = %s", got)
	}
}
