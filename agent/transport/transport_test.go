package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

func socketpair(t *testing.T) (agent, host int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fds[0], fds[1]
}

func TestDeviceReadWrite(t *testing.T) {
	a, h := socketpair(t)
	defer unix.Close(h)
	ch, err := NewDeviceChannel(a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if ch.PerClient() {
		t.Fatal("a device channel must keep its input across reconnects")
	}
	ctx := context.Background()
	s, err := ch.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go unix.Write(h, []byte(`{"execute":"guest-ping"}`))
	buf := make([]byte, 64)
	n, err := s.Read(ctx, buf)
	if err != nil || string(buf[:n]) != `{"execute":"guest-ping"}` {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if err := s.WriteAll(ctx, []byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	n, _ = unix.Read(h, buf)
	if string(buf[:n]) != "{}\n" {
		t.Fatalf("host got %q", buf[:n])
	}
	// The same device is served again.
	s2, err := ch.Accept(ctx)
	if err != nil || s2 != s {
		t.Fatalf("second Accept: %v, same stream %v", err, s2 == s)
	}
}

// A device whose host side is gone keeps being polled (logging "received EOF" each time)
// instead of reporting EOF, and the wait ends when the context does.
func TestDeviceWaitsForHost(t *testing.T) {
	a, h := socketpair(t)
	unix.Close(h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var eofs atomic.Int32
	ch, err := NewDeviceChannel(a, Options{Debugf: func(format string, _ ...any) {
		if format == "received EOF" && eofs.Add(1) == 3 {
			cancel()
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	s, _ := ch.Accept(context.Background())
	n, err := s.Read(ctx, make([]byte, 16))
	if !errors.Is(err, context.Canceled) || n != 0 {
		t.Fatalf("read %d, %v; want the context's error", n, err)
	}
	if eofs.Load() < 3 {
		t.Fatalf("%d EOF polls, want 3", eofs.Load())
	}
}

func TestReadInterruptedByContext(t *testing.T) {
	a, h := socketpair(t)
	defer unix.Close(h)
	ch, _ := NewDeviceChannel(a, Options{})
	defer ch.Close()
	s, _ := ch.Accept(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := s.Read(ctx, make([]byte, 16))
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	// A stale wake-up must not disturb the next read.
	go unix.Write(h, []byte("x"))
	n, err := s.Read(context.Background(), make([]byte, 16))
	if err != nil || n != 1 {
		t.Fatalf("read after cancel: %d %v", n, err)
	}
}

// A reply far larger than the socket buffer arrives whole and in order.
func TestWriteAllLarge(t *testing.T) {
	a, h := socketpair(t)
	ch, _ := NewDeviceChannel(a, Options{})
	defer ch.Close()
	s, _ := ch.Accept(context.Background())
	want := make([]byte, 64<<20)
	for i := range want {
		want[i] = byte(i * 7 >> 3)
	}
	got := make(chan []byte)
	go func() {
		f := os.NewFile(uintptr(h), "host")
		defer f.Close()
		b, _ := io.ReadAll(io.LimitReader(f, int64(len(want))))
		got <- b
	}()
	if err := s.WriteAll(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("host received %d bytes, not the %d written", len(b), len(want))
	}
}

// A host that leaves in the middle of a reply makes WriteAll fail with ErrPeerGone, and the
// process survives (no SIGPIPE).
func TestWriteAllPeerGone(t *testing.T) {
	a, h := socketpair(t)
	ch, _ := NewDeviceChannel(a, Options{})
	defer ch.Close()
	s, _ := ch.Accept(context.Background())
	go func() {
		buf := make([]byte, 4096)
		unix.Read(h, buf)
		unix.Close(h)
	}()
	err := s.WriteAll(context.Background(), make([]byte, 32<<20))
	if !errors.Is(err, ErrPeerGone) {
		t.Fatalf("err %v, want ErrPeerGone", err)
	}
}

func TestUnixListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sock")
	// A stale socket from an earlier agent.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	ch, err := Open(UnixListen, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if !ch.PerClient() {
		t.Fatal("unix-listen clients must start with fresh input")
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket file %v %v, want a socket with mode 0600", st.Mode(), err)
	}
	ctx := context.Background()
	for i := range 2 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ch.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("client %d", i)
		c.Write([]byte(msg))
		buf := make([]byte, 64)
		n, err := s.Read(ctx, buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("read %q %v", buf[:n], err)
		}
		if err := s.WriteAll(ctx, []byte("reply")); err != nil {
			t.Fatal(err)
		}
		n, _ = c.Read(buf)
		if string(buf[:n]) != "reply" {
			t.Fatalf("client got %q", buf[:n])
		}
		c.Close()
		if _, err := s.Read(ctx, buf); !errors.Is(err, io.EOF) {
			t.Fatalf("read after client left: %v, want io.EOF", err)
		}
		s.Close()
	}
}

func TestUnixListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(UnixListen, path, Options{}); err == nil || !strings.Contains(err.Error(), "Failed to bind socket to "+path) {
		t.Fatalf("err %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Fatal("a regular file was replaced")
	}
	if _, err := Open(UnixListen, "/nonexistent/dir/sock", Options{}); err == nil ||
		err.Error() != "Failed to bind socket to /nonexistent/dir/sock: No such file or directory" {
		t.Fatalf("err %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(VirtioSerial, "/nonexistent/port", Options{}); err == nil ||
		err.Error() != "error opening channel '/nonexistent/port': No such file or directory" {
		t.Fatalf("virtio: %v", err)
	}
	if _, err := Open("bogus", "/x", Options{}); err == nil || err.Error() != "unsupported channel method/type: bogus" {
		t.Fatalf("bogus: %v", err)
	}
	if _, err := Open(VsockListen, "xx", Options{}); err == nil || err.Error() != "error parsing address 'xx'" {
		t.Fatalf("vsock: %v", err)
	}
	// A regular file is not a terminal.
	f := filepath.Join(t.TempDir(), "notatty")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ISASerial, f, Options{}); err == nil || !strings.Contains(err.Error(), "error opening channel") {
		t.Fatalf("isa-serial on a file: %v", err)
	}
}

// vsock either listens or fails with a clear message; hosts without vsock are common.
func TestVsockListen(t *testing.T) {
	ch, err := Open(VsockListen, fmt.Sprintf("%d:%d", unix.VMADDR_CID_ANY, 40000+os.Getpid()%20000), Options{})
	if err != nil {
		if !strings.Contains(err.Error(), "vsock") {
			t.Fatalf("unclear error: %v", err)
		}
		t.Skipf("no vsock here: %v", err)
	}
	defer ch.Close()
	if !ch.PerClient() {
		t.Fatal("vsock clients must start with fresh input")
	}
}

func TestParseVsockAddr(t *testing.T) {
	cid, port, err := ParseVsockAddr("3:1234")
	if err != nil || cid != 3 || port != 1234 {
		t.Fatalf("%d %d %v", cid, port, err)
	}
	for _, bad := range []string{"", "3", ":1", "3:", "a:1", "3:b", "3:99999999999"} {
		if _, _, err := ParseVsockAddr(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func openPTY(t *testing.T) (master int, slave string) {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(m, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	return m, fmt.Sprintf("/dev/pts/%d", n)
}

func TestISASerial(t *testing.T) {
	m, slave := openPTY(t)
	defer unix.Close(m)
	// Keep the slave open so that input written before the agent opens it is queued.
	early, err := unix.Open(slave, unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(early)
	raw, err := unix.IoctlGetTermios(early, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	raw.Lflag &^= unix.ICANON | unix.ECHO
	if err := unix.IoctlSetTermios(early, unix.TCSETS, raw); err != nil {
		t.Fatal(err)
	}
	unix.Write(m, []byte("stale garbage"))
	// Wait until the line discipline has queued it.
	for {
		n, err := unix.IoctlGetInt(early, unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if n == len("stale garbage") {
			break
		}
	}

	ch, err := Open(ISASerial, slave, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	s, _ := ch.Accept(context.Background())
	tio, err := unix.IoctlGetTermios(early, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 || tio.Oflag&unix.OPOST != 0 || tio.Iflag&unix.ICRNL != 0 {
		t.Errorf("line not raw: lflag %#x oflag %#x iflag %#x", tio.Lflag, tio.Oflag, tio.Iflag)
	}
	if tio.Cflag&unix.CBAUD != unix.B38400 {
		t.Errorf("speed bits %#x, want B38400", tio.Cflag&unix.CBAUD)
	}
	unix.Write(m, []byte("{\"execute\":\r\n\"guest-ping\"}"))
	var got []byte
	for len(got) < len("{\"execute\":\r\n\"guest-ping\"}") {
		buf := make([]byte, 64)
		n, err := s.Read(context.Background(), buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "{\"execute\":\r\n\"guest-ping\"}" {
		t.Fatalf("agent read %q: stale input not flushed or bytes translated", got)
	}
	if err := s.WriteAll(context.Background(), []byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, _ := unix.Read(m, buf)
	if string(buf[:n]) != "{}\n" {
		t.Fatalf("host read %q (output processing must be off)", buf[:n])
	}
}

// A FIFO behaves like a virtio port whose host comes and goes: reads give EOF while no writer
// is connected. The stream keeps polling through that and delivers what the next host sends.
func TestDeviceHostReconnects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "port")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var eofs atomic.Int32
	// Holds a token whenever eofs changed since the test last looked.
	eofSeen := make(chan struct{}, 1)
	ch, err := NewDeviceChannel(fd, Options{Debugf: func(format string, _ ...any) {
		if format == "received EOF" {
			eofs.Add(1)
			select {
			case eofSeen <- struct{}{}:
			default:
			}
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	s, _ := ch.Accept(context.Background())
	data := make(chan []byte)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			buf := make([]byte, 64)
			n, err := s.Read(ctx, buf)
			if err != nil {
				close(data)
				return
			}
			data <- buf[:n]
		}
	}()
	for i, part := range []string{`{"execute":"guest-sy`, `nc","arguments":{"id":1}}`} {
		// Each "host" connects after the agent has seen the port disconnected.
		for eofs.Load() <= int32(i) {
			<-eofSeen
		}
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteString(part); err != nil {
			t.Fatal(err)
		}
		w.Close()
		var got []byte
		for len(got) < len(part) {
			b, ok := <-data
			if !ok {
				t.Fatalf("host %d: the stream ended", i)
			}
			got = append(got, b...)
		}
		if string(got) != part {
			t.Fatalf("host %d: read %q", i, got)
		}
	}
}

// A LISTEN_FDS that is not a positive count means systemd passed no socket: the agent opens
// its channel as configured instead of failing, as QEMU's check_socket_activation does.
func TestSocketActivationWithoutUsableCount(t *testing.T) {
	for _, nfds := range []string{"x", "0", "-1", "1x"} {
		t.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
		t.Setenv("LISTEN_FDS", nfds)
		fd, method, ok, err := SocketActivation()
		if ok || err != nil || fd != 0 || method != "" {
			t.Errorf("LISTEN_FDS=%q: fd %d method %q ok %v err %v, want no activation", nfds, fd, method, ok, err)
		}
		if _, set := os.LookupEnv("LISTEN_FDS"); set {
			t.Errorf("LISTEN_FDS=%q: left in the environment", nfds)
		}
	}
}
