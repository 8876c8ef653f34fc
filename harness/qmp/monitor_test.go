package qmp

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startQEMU starts a guestless QEMU (-S: no CPU runs, no image needed) whose QMP monitor listens
// on a socket the test created, so there is nothing to poll for. It returns the socket path.
func startQEMU(t *testing.T, extra ...string) (string, *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed (scripts/install-deps.sh e2e)")
	}
	dir, err := os.MkdirTemp("/tmp", "qgakit-qmptest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	f, err := ln.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-S", "-nodefaults", "-display", "none", "-machine", "q35,accel=tcg",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off", "-mon", "chardev=qmp,mode=control"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.ExtraFiles = []*os.File{f}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ln.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("qemu stderr: %s", stderr.String())
		}
	})
	return sock, cmd
}

func dial(t *testing.T, sock string) *Monitor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := Dial(ctx, sock)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestExecuteReturnsValuesAndTypedErrors(t *testing.T) {
	sock, _ := startQEMU(t, "-name", "qmp-unit")
	m := dial(t, sock)
	ctx := testCtx(t)

	if v := m.Version(); !strings.Contains(v, ".") || v == "0.0.0" {
		t.Errorf("Version() = %q, want QEMU's version from the greeting", v)
	}
	st, err := m.Status(ctx)
	if err != nil || st != "prelaunch" {
		t.Errorf("Status = %q, %v; want prelaunch under -S", st, err)
	}
	var name struct {
		Name string `json:"name"`
	}
	if err := m.Execute(ctx, "query-name", nil, &name); err != nil || name.Name != "qmp-unit" {
		t.Errorf("query-name = %+v, %v; want qmp-unit", name, err)
	}

	err = m.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) {
		t.Fatalf("unknown command: error %v (%T), want a *qmp.Error", err, err)
	}
	if qe.Class != "CommandNotFound" || qe.Desc != "The command no-such-command has not been found" {
		t.Errorf("unknown command: got %+v", qe)
	}
	err = m.Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "no-such-property"}, nil)
	if !errors.As(err, &qe) || qe.Class != "GenericError" || !strings.Contains(qe.Desc, "no-such-property") {
		t.Errorf("bad property: got %v, want a GenericError naming the property", err)
	}
	// The monitor stays usable after errors.
	if _, err := m.Status(ctx); err != nil {
		t.Errorf("Status after errors: %v", err)
	}
}

func TestRawDeviceAddReachesQEMU(t *testing.T) {
	sock, _ := startQEMU(t, "-device", "virtio-serial-pci,id=vser0")
	m := dial(t, sock)
	ctx := testCtx(t)
	dir := t.TempDir()
	chardev := map[string]any{
		"id": "qga0",
		"backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": filepath.Join(dir, "qga.sock")}},
			"server": true, "wait": false,
		}},
	}
	if err := m.Execute(ctx, "chardev-add", chardev, nil); err != nil {
		t.Fatalf("chardev-add: %v", err)
	}
	raw := []byte(`{"execute":"device_add","arguments":{"driver":"virtserialport","bus":"vser0.0",` +
		`"chardev":"qga0","name":"org.qemu.guest_agent.0","id":"qga0-port"}}`)
	if _, err := m.ExecuteRaw(ctx, raw); err != nil {
		t.Fatalf("device_add: %v", err)
	}
	var portName string
	if err := m.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/qga0-port", "property": "name"}, &portName); err != nil {
		t.Fatalf("qom-get: %v", err)
	}
	if portName != "org.qemu.guest_agent.0" {
		t.Errorf("port name = %q: device_add's properties did not reach QEMU", portName)
	}
	mark := m.Mark()
	if err := m.Execute(ctx, "device_del", map[string]any{"id": "qga0-port"}, nil); err != nil {
		t.Fatalf("device_del: %v", err)
	}
	ev, err := m.WaitEventAfter(ctx, mark, "DEVICE_DELETED", func(e Event) bool { return e.Str("device") == "qga0-port" })
	if err != nil {
		t.Fatalf("wait DEVICE_DELETED: %v", err)
	}
	if int(ev.Seq) < int(mark) {
		t.Errorf("event #%d is before the mark %d", ev.Seq, mark)
	}
	if err := m.Execute(ctx, "chardev-remove", map[string]any{"id": "qga0"}, nil); err != nil {
		t.Errorf("chardev-remove after the port is gone: %v", err)
	}
}

func TestEventLogPositions(t *testing.T) {
	sock, _ := startQEMU(t)
	m := dial(t, sock)
	ctx := testCtx(t)

	if err := m.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatalf("cont: %v", err)
	}
	// RESUME was sent before cont's reply, so it is in the log already and WaitEvent sees it.
	first, err := m.WaitEvent(ctx, "RESUME", nil)
	if err != nil {
		t.Fatalf("WaitEvent RESUME: %v", err)
	}
	afterCont := m.Mark()
	if int(afterCont) <= first.Seq {
		t.Fatalf("Mark %d after cont is not past RESUME #%d", afterCont, first.Seq)
	}
	if err := m.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := m.WaitEventAfter(ctx, afterCont, "STOP", nil); err != nil {
		t.Fatalf("WaitEventAfter STOP: %v", err)
	}
	// No RESUME after the mark: waiting must not return the old one.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if ev, err := m.WaitEventAfter(short, afterCont, "RESUME", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitEventAfter RESUME past the mark = %v, %v; want a deadline error", ev, err)
	}
	// A match function filters.
	if err := m.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	second, err := m.WaitEvent(ctx, "RESUME", func(e Event) bool { return e.Seq > first.Seq })
	if err != nil || second.Seq <= first.Seq {
		t.Errorf("second RESUME = %v, %v", second, err)
	}
	names := []string{}
	for _, e := range m.Events() {
		names = append(names, e.Name)
	}
	if got := strings.Join(names, ","); got != "RESUME,STOP,RESUME" {
		t.Errorf("event log = %s, want RESUME,STOP,RESUME", got)
	}
}

func TestQuitClosesEverything(t *testing.T) {
	sock, cmd := startQEMU(t)
	m := dial(t, sock)
	ctx := testCtx(t)
	if err := m.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	ev, err := m.WaitEvent(ctx, "SHUTDOWN", nil)
	if err != nil || ev.Str("reason") != "host-qmp-quit" || ev.Bool("guest") {
		t.Errorf("SHUTDOWN = %v, %v; want reason host-qmp-quit, guest false", ev, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("QEMU exit after quit: %v", err)
	}
	select {
	case <-m.Closed():
	case <-ctx.Done():
		t.Fatal("Closed() not closed after QEMU exited")
	}
	if err := m.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after exit = %v, want ErrClosed", err)
	}
	if _, err := m.WaitEventAfter(ctx, m.Mark(), "RESUME", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitEventAfter on a closed monitor = %v, want ErrClosed", err)
	}
	var sb strings.Builder
	if _, err := m.Transcript().WriteTo(&sb); err != nil {
		t.Fatal(err)
	}
	tr := sb.String()
	for _, want := range []string{`-> {"execute":"qmp_capabilities"}`, `"execute":"quit"`, `ev {"timestamp"`, `"SHUTDOWN"`, `<- {"QMP"`} {
		if !strings.Contains(tr, want) {
			t.Errorf("transcript lacks %q:\n%s", want, tr)
		}
	}
}

func TestRawMonitorThroughTap(t *testing.T) {
	sock, _ := startQEMU(t)
	m := dial(t, sock)
	r := m.Raw()
	st, err := r.QueryStatus()
	if err != nil {
		t.Fatalf("raw QueryStatus: %v", err)
	}
	if st.Status.String() != "prelaunch" {
		t.Errorf("raw status = %v, want prelaunch", st.Status)
	}
	_, err = r.QomGet("/machine", "no-such-property")
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "GenericError" {
		t.Errorf("raw error = %v (%T), want a *qmp.Error", err, err)
	}
}

func TestConcurrentCommands(t *testing.T) {
	sock, _ := startQEMU(t, "-name", "concurrent")
	m := dial(t, sock)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%2 == 0 {
				var n struct{ Name string }
				if err := m.Execute(ctx, "query-name", nil, &n); err != nil || n.Name != "concurrent" {
					errs <- errors.New("query-name mixed up: " + n.Name)
				}
				return
			}
			if st, err := m.Status(ctx); err != nil || st != "prelaunch" {
				errs <- errors.New("query-status mixed up: " + st)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDialHonoursTheDeadline(t *testing.T) {
	// A server that accepts and never greets: go-qemu's Connect alone would wait forever.
	sock := filepath.Join(t.TempDir(), "mute.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			buf := make([]byte, 1)
			c.Read(buf) // until the client gives up
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	m, err := Dial(ctx, sock)
	if err == nil {
		m.Close()
		t.Fatal("Dial to a mute server succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial error = %v, want it to wrap context.DeadlineExceeded", err)
	}
}
