//go:build vmtest

package image

// A minimal QEMU driver for this package's boot tests only: harness/vm is the real one and
// may not exist yet, and these tests must prove the image on its own. Every socket is a
// listener of the test that QEMU dials as a client, so nothing written before the test is
// connected is lost and nothing needs polling.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type vmConfig struct {
	initrd  string
	cmdline string
	// coldPort adds the agent's port on the command line instead of leaving it to QMP.
	coldPort bool
	disks    []string // qcow2 files, in order vda, vdb, ...
	extra    []string // more QEMU arguments
}

type testVM struct {
	t       testing.TB
	dir     string
	start   time.Time
	cmd     *exec.Cmd
	stderr  bytes.Buffer
	exited  chan struct{}
	exitErr error
	serial  *lineLog
	conns   map[string]chan net.Conn
	console net.Conn
	qmp     *qmpConn
}

// bootVM starts QEMU with the tiny kernel and the given initramfs; the test ends it.
func bootVM(t testing.TB, ctx context.Context, tiny *Tiny, c vmConfig) *testVM {
	t.Helper()
	dir := t.TempDir()
	vm := &testVM{t: t, dir: dir, exited: make(chan struct{}), serial: newLineLog(), conns: map[string]chan net.Conn{}}
	names := []string{"ttyS0", "ttyS1", "qmp"}
	if c.coldPort {
		names = append(names, "qga")
	}
	for _, n := range names {
		vm.listen(n)
	}
	args := []string{
		"-machine", "q35,accel=tcg", "-cpu", "max", "-m", "512", "-smp", "2",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", tiny.Kernel, "-initrd", c.initrd, "-append", c.cmdline,
		"-chardev", "socket,id=s0,path=" + vm.sock("ttyS0"), "-serial", "chardev:s0",
		"-chardev", "socket,id=s1,path=" + vm.sock("ttyS1"), "-serial", "chardev:s1",
		"-chardev", "socket,id=mon,path=" + vm.sock("qmp"), "-mon", "chardev=mon,mode=control",
		"-device", "virtio-serial-pci,id=vser0",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
	}
	if c.coldPort {
		args = append(args, "-chardev", "socket,id=qga0,path="+vm.sock("qga"),
			"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0")
	}
	for i, d := range c.disks {
		args = append(args, "-drive", fmt.Sprintf("file=%s,if=none,id=d%d,format=qcow2", d, i),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=d%d", i))
	}
	args = append(args, c.extra...)
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	vm.cmd.Stderr = &vm.stderr
	t.Logf("qemu-system-x86_64 %s", shellQuote(args))
	vm.start = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	go func() {
		vm.exitErr = vm.cmd.Wait()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-vm.exited:
		default:
			vm.cmd.Process.Kill()
			<-vm.exited
		}
		if t.Failed() {
			t.Logf("ttyS0:\n%s\nQEMU stderr:\n%s", vm.serial.text(), vm.stderr.String())
		}
	})
	s0 := vm.accept(ctx, "ttyS0")
	go vm.serial.readFrom(s0, vm.start)
	vm.console = vm.accept(ctx, "ttyS1")
	vm.qmp = newQMP(t, ctx, vm.accept(ctx, "qmp"))
	return vm
}

func (vm *testVM) sock(name string) string { return filepath.Join(vm.dir, name+".sock") }

func (vm *testVM) listen(name string) {
	l, err := net.Listen("unix", vm.sock(name))
	if err != nil {
		vm.t.Fatal(err)
	}
	ch := make(chan net.Conn, 1)
	vm.conns[name] = ch
	go func() {
		defer l.Close()
		if c, err := l.Accept(); err == nil {
			vm.t.Cleanup(func() { c.Close() })
			ch <- c
		}
	}()
}

func (vm *testVM) accept(ctx context.Context, name string) net.Conn {
	vm.t.Helper()
	select {
	case c := <-vm.conns[name]:
		return c
	case <-vm.exited:
		vm.t.Fatalf("QEMU exited (%v) before connecting %s: %s", vm.exitErr, name, vm.stderr.String())
	case <-ctx.Done():
		vm.t.Fatalf("QEMU did not connect %s: %v", name, ctx.Err())
	}
	return nil
}

// waitSerial waits for a ttyS0 line containing s and returns when it came, counted from
// QEMU's start.
func (vm *testVM) waitSerial(ctx context.Context, s string) time.Duration {
	vm.t.Helper()
	at, err := vm.serial.wait(ctx, s)
	if err != nil {
		vm.t.Fatalf("waiting for %q on ttyS0: %v", s, err)
	}
	return at
}

// waitSerialCount waits for the n-th ttyS0 line containing s.
func (vm *testVM) waitSerialCount(ctx context.Context, s string, n int) {
	vm.t.Helper()
	for {
		if strings.Count(vm.serial.text(), s) >= n {
			return
		}
		vm.serial.mu.Lock()
		ch := vm.serial.changed
		vm.serial.mu.Unlock()
		if strings.Count(vm.serial.text(), s) >= n {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			vm.t.Fatalf("waiting for %d lines with %q on ttyS0: %v", n, s, ctx.Err())
		}
	}
}

// waitExit waits for QEMU to end and returns its exit error.
func (vm *testVM) waitExit(ctx context.Context) error {
	vm.t.Helper()
	select {
	case <-vm.exited:
		return vm.exitErr
	case <-ctx.Done():
		vm.t.Fatalf("QEMU still running: %v", ctx.Err())
		return nil
	}
}

var markerRE = regexp.MustCompile(`\n__QGAKIT_([0-9a-f]+)_(\d+)__\n`)

// shell runs a command line on the ttyS1 console and returns its output and exit status.
func (vm *testVM) shell(ctx context.Context, cmdline string) (string, int) {
	vm.t.Helper()
	nonce := fmt.Sprintf("%x", time.Now().UnixNano())
	if dl, ok := ctx.Deadline(); ok {
		vm.console.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(vm.console, "%s; printf '\\n__QGAKIT_%s_%%d__\\n' $?\n", cmdline, nonce); err != nil {
		vm.t.Fatalf("console write: %v", err)
	}
	var buf []byte
	chunk := make([]byte, 4096)
	for {
		for _, m := range markerRE.FindAllSubmatchIndex(buf, -1) {
			if string(buf[m[2]:m[3]]) == nonce {
				rc, err := strconv.Atoi(string(buf[m[4]:m[5]]))
				if err != nil {
					rc = -1 // the marker regexp admits only digits; -1 cannot be mistaken for a status
				}
				return string(buf[:m[0]]), rc
			}
		}
		n, err := vm.console.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if err != nil {
			vm.t.Fatalf("console read after %q: %v", buf, err)
		}
	}
}

// agentConn is the host side of the agent's channel.
type agentConn struct {
	net.Conn
	r *bufio.Reader
}

func newAgentConn(c net.Conn) *agentConn { return &agentConn{Conn: c, r: bufio.NewReader(c)} }

// sync sends 0xFF and guest-sync-delimited, and reads past anything else (the reference
// answers the lone 0xFF with a parse error) until the matching reply.
func (a *agentConn) sync(ctx context.Context, id int64) error {
	if dl, ok := ctx.Deadline(); ok {
		a.SetDeadline(dl)
	}
	req := fmt.Sprintf("\xff{\"execute\": \"guest-sync-delimited\", \"arguments\": {\"id\": %d}}\n", id)
	if _, err := a.Write([]byte(req)); err != nil {
		return fmt.Errorf("write sync: %w", err)
	}
	for {
		if _, err := a.r.ReadBytes(0xFF); err != nil {
			return fmt.Errorf("read until 0xFF: %w", err)
		}
		line, err := a.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("read sync reply: %w", err)
		}
		var resp struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(line, &resp) == nil && resp.Return != nil && *resp.Return == id {
			return nil
		}
	}
}

// command sends one command and returns its decoded reply; call it after sync.
func (a *agentConn) command(ctx context.Context, cmd string) (map[string]any, error) {
	if dl, ok := ctx.Deadline(); ok {
		a.SetDeadline(dl)
	}
	if _, err := a.Write([]byte(cmd + "\n")); err != nil {
		return nil, err
	}
	line, err := a.r.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("reply %q: %w", line, err)
	}
	return m, nil
}

// lineLog collects ttyS0 lines with their arrival time.
type lineLog struct {
	mu      sync.Mutex
	lines   []string
	at      []time.Duration
	closed  bool
	changed chan struct{}
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) readFrom(c net.Conn, start time.Time) {
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, strings.TrimRight(sc.Text(), "\r"))
		l.at = append(l.at, time.Since(start))
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *lineLog) wait(ctx context.Context, s string) (time.Duration, error) {
	seen := 0
	for {
		l.mu.Lock()
		for ; seen < len(l.lines); seen++ {
			if strings.Contains(l.lines[seen], s) {
				at := l.at[seen]
				l.mu.Unlock()
				return at, nil
			}
		}
		closed, ch := l.closed, l.changed
		l.mu.Unlock()
		if closed {
			return 0, fmt.Errorf("ttyS0 closed")
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (l *lineLog) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for i, s := range l.lines {
		fmt.Fprintf(&b, "%7.3f %s\n", l.at[i].Seconds(), s)
	}
	return b.String()
}

// qmpConn is just enough QMP: commands in order, events collected.
type qmpConn struct {
	t       testing.TB
	enc     *json.Encoder
	replies chan map[string]any
	mu      sync.Mutex
	events  []map[string]any
	evCh    chan struct{}
}

func newQMP(t testing.TB, ctx context.Context, c net.Conn) *qmpConn {
	q := &qmpConn{t: t, enc: json.NewEncoder(c), replies: make(chan map[string]any, 1), evCh: make(chan struct{})}
	dec := json.NewDecoder(c)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		t.Fatalf("QMP greeting: %v", err)
	}
	go func() {
		for {
			var m map[string]any
			if err := dec.Decode(&m); err != nil {
				close(q.replies)
				return
			}
			if _, ok := m["event"]; ok {
				q.mu.Lock()
				q.events = append(q.events, m)
				close(q.evCh)
				q.evCh = make(chan struct{})
				q.mu.Unlock()
				continue
			}
			q.replies <- m
		}
	}()
	q.do(ctx, "qmp_capabilities", nil)
	return q
}

func (q *qmpConn) do(ctx context.Context, cmd string, args map[string]any) map[string]any {
	q.t.Helper()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	if err := q.enc.Encode(req); err != nil {
		q.t.Fatalf("QMP %s: %v", cmd, err)
	}
	select {
	case r, ok := <-q.replies:
		if !ok {
			q.t.Fatalf("QMP %s: connection closed", cmd)
		}
		if e, bad := r["error"]; bad {
			q.t.Fatalf("QMP %s: %v", cmd, e)
		}
		return r
	case <-ctx.Done():
		q.t.Fatalf("QMP %s: %v", cmd, ctx.Err())
	}
	return nil
}

// waitEvent waits for an event of that name (any time since connecting) whose data contains
// the given fields, and consumes it.
func (q *qmpConn) waitEvent(ctx context.Context, name string, data map[string]any) {
	q.t.Helper()
	for {
		q.mu.Lock()
		for i, e := range q.events {
			if e["event"] != name {
				continue
			}
			d, _ := e["data"].(map[string]any)
			match := true
			for k, v := range data {
				if d[k] != v {
					match = false
				}
			}
			if match {
				q.events = append(q.events[:i:i], q.events[i+1:]...)
				q.mu.Unlock()
				return
			}
		}
		ch := q.evCh
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			q.t.Fatalf("waiting for QMP event %s %v: %v", name, data, ctx.Err())
		}
	}
}

// hotAddAgentPort adds the agent's channel the way the harness does: a chardev that QEMU
// dials (the test listens) and a virtserialport named org.qemu.guest_agent.0.
func (vm *testVM) hotAddAgentPort(ctx context.Context, id string) *agentConn {
	vm.t.Helper()
	name := "qga-" + id
	vm.listen(name)
	vm.qmp.do(ctx, "chardev-add", map[string]any{"id": name, "backend": map[string]any{
		"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": vm.sock(name)}},
			"server": false}}})
	conn := vm.accept(ctx, name)
	vm.qmp.do(ctx, "device_add", map[string]any{"driver": "virtserialport", "bus": "vser0.0",
		"chardev": name, "name": "org.qemu.guest_agent.0", "id": id})
	return newAgentConn(conn)
}

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " '\"") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
