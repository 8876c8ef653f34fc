package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/transport"
	"github.com/qgakit/qgakit/schema"
	"golang.org/x/sys/unix"
)

// bigReply is the size of the payload that testDispatcher's guest-file-read returns: more
// than any socket buffer, so the reply needs many partial writes.
const bigReply = 48 << 20

// testDispatcher is the real dispatcher with small handlers of the test's own, so that these
// tests exercise the loop and not the commands.
func testDispatcher(t testing.TB) *dispatch.Dispatcher {
	d := dispatch.New(schema.MustLoad(), dispatch.Options{})
	d.Register("guest-ping", func(context.Context, dispatch.Args) (any, error) { return nil, nil })
	d.Register("guest-sync", func(_ context.Context, a dispatch.Args) (any, error) {
		id, _ := a.Int("id")
		return id, nil
	})
	payload := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("x"), bigReply*3/4))
	d.Register("guest-file-read", func(context.Context, dispatch.Args) (any, error) {
		return map[string]any{"count": int64(bigReply * 3 / 4), "buf-b64": payload, "eof": true}, nil
	})
	return d
}

type host struct {
	fd int
	r  *bufio.Reader
}

// startDevice serves a socketpair as if it were a virtio port and returns the host's end and
// a function that stops the server and returns what Serve returned.
func startDevice(t *testing.T, srv *Server) (*host, func() error) {
	t.Helper()
	return startWrappedDevice(t, srv, nil)
}

// startWrappedDevice is startDevice with the server's channel wrapped by wrap, unless nil.
func startWrappedDevice(t *testing.T, srv *Server, wrap func(transport.Channel) transport.Channel) (*host, func() error) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := transport.NewDeviceChannel(fds[0], transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Channel = ch
	if wrap != nil {
		srv.Channel = wrap(ch)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() {
		// Serve returns nil once cancelled, so an error here is a channel failure that the
		// test itself did not look for.
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		ch.Close()
		unix.Close(fds[1])
	})
	return &host{fd: fds[1], r: bufio.NewReaderSize(fdReader(fds[1]), 1<<16)}, stop
}

type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(f), p)
	if n == 0 && err == nil {
		return 0, errors.New("EOF")
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

func (h *host) send(t *testing.T, s string) {
	t.Helper()
	if _, err := unix.Write(h.fd, []byte(s)); err != nil {
		t.Fatal(err)
	}
}

func (h *host) line(t *testing.T) string {
	t.Helper()
	l, err := h.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read reply: %v (got %q)", err, l)
	}
	return l
}

func TestSplitAndBatchedRequests(t *testing.T) {
	h, _ := startDevice(t, &Server{Dispatcher: testDispatcher(t)})
	h.send(t, `{"execute":"guest-sy`)
	h.send(t, `nc","arguments":{"id":1}}{"execute":"guest-sync","arguments":{"id":2}}`+"\n"+`{"execute":"guest-ping","id":"x"}`)
	for _, want := range []string{`{"return": 1}` + "\n", `{"return": 2}` + "\n", `{"return": {}, "id": "x"}` + "\n"} {
		if got := h.line(t); got != want {
			t.Fatalf("reply %q, want %q", got, want)
		}
	}
}

func TestLargeReplyArrivesWhole(t *testing.T) {
	h, _ := startDevice(t, &Server{Dispatcher: testDispatcher(t)})
	h.send(t, `{"execute":"guest-file-read","arguments":{"handle":1}}{"execute":"guest-ping"}`)
	l := h.line(t)
	if len(l) < bigReply || !strings.HasSuffix(l, "\"eof\": true}}\n") && !strings.HasSuffix(l, "}}\n") {
		t.Fatalf("reply of %d bytes, want more than %d", len(l), bigReply)
	}
	if !strings.Contains(l, strings.Repeat("eHh4", 1000)) {
		t.Fatal("payload missing from the reply")
	}
	if got := h.line(t); got != "{\"return\": {}}\n" {
		t.Fatalf("next reply %q", got)
	}
}

// The decoder of a device channel keeps a partial message across Serve calls, the way the
// reference's parser keeps it across host reconnects and channel reopenings.
func TestDeviceDecoderSurvives(t *testing.T) {
	srv := &Server{Dispatcher: testDispatcher(t)}
	fds, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	ch, _ := transport.NewDeviceChannel(fds[0], transport.Options{})
	defer ch.Close()
	defer unix.Close(fds[1])
	srv.Channel = ch
	read := make(chan struct{}, 4)
	srv.Log = NewLogger(&bytes.Buffer{}, "", true)
	srv.Log.Enabled = func() bool { read <- struct{}{}; return false }

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	unix.Write(fds[1], []byte(`{"execute":"guest-sync",`))
	<-read // the loop has read the first half
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	srv.Log = nil
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- srv.Serve(ctx) }()
	unix.Write(fds[1], []byte(`"arguments":{"id":7}}`))
	h := &host{fd: fds[1], r: bufio.NewReader(fdReader(fds[1]))}
	if got := h.line(t); got != "{\"return\": 7}\n" {
		t.Fatalf("reply %q", got)
	}
}

func startUnix(t *testing.T, srv *Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sock")
	ch, err := transport.Open(transport.UnixListen, path, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Channel = ch
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		ch.Close()
	})
	return path
}

func dialLine(t *testing.T, path, req string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(req))
	l, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return l
}

// Each unix-listen client starts with a fresh decoder, and a client that leaves in the middle
// of a large reply does not stop the agent from serving the next one.
func TestUnixClientsIndependent(t *testing.T) {
	path := startUnix(t, &Server{Dispatcher: testDispatcher(t)})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"execute":"guest-file-read","arguments":{"handle":1}}{"execute":`))
	buf := make([]byte, 10)
	if _, err := c.Read(buf); err != nil { // the reply has started
		t.Fatal(err)
	}
	c.Close()
	if got := dialLine(t, path, `{"execute":"guest-sync","arguments":{"id":3}}`); got != "{\"return\": 3}\n" {
		t.Fatalf("next client got %q", got)
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	_, stop := startDevice(t, &Server{Dispatcher: testDispatcher(t)})
	if err := stop(); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
}

var logLine = regexp.MustCompile(`^[0-9]+\.[0-9]{1,6}: (debug|warning|critical|error): .*\n$`)

func TestLogging(t *testing.T) {
	var out bytes.Buffer
	var after atomic.Int32
	srv := &Server{Dispatcher: testDispatcher(t), Log: NewLogger(&out, "", true), AfterMessage: func() { after.Add(1) }}
	h, stop := startDevice(t, srv)
	// The NUL ends the data in the debug line, as in the reference's C string, and is itself
	// a stray character that draws an error reply.
	h.send(t, "{\"execute\":\"guest-ping\"}\x00")
	h.line(t)
	if l := h.line(t); !strings.Contains(l, "JSON parse error") {
		t.Fatalf("NUL drew %q", l)
	}
	// Serve has returned once stop does, so every log line is written.
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	lines := strings.SplitAfter(out.String(), "\n")
	want := []string{
		"debug: read data, count: 25, data: {\"execute\":\"guest-ping\"}\n",
		"debug: process_event: called\n",
		"debug: processing command\n",
		"debug: sending data, count: 15\n",
	}
	for i, w := range want {
		if i >= len(lines) || !logLine.MatchString(lines[i]) || !strings.HasSuffix(lines[i], w) {
			t.Fatalf("log line %d: %q, want ...%q\nlog:\n%s", i, lines[i], w, out.String())
		}
	}
	if after.Load() != 2 {
		t.Fatalf("AfterMessage ran %d times", after.Load())
	}

	out.Reset()
	quiet := NewLogger(&out, "", false)
	quiet.Debugf("hidden")
	quiet.Warningf("hidden")
	quiet.Criticalf("shown %d", 1)
	if !strings.HasSuffix(out.String(), ": critical: shown 1\n") || strings.Contains(out.String(), "hidden") {
		t.Fatalf("non-verbose log %q", out.String())
	}
	out.Reset()
	quiet.Enabled = func() bool { return false }
	quiet.Criticalf("frozen")
	if out.Len() != 0 {
		t.Fatalf("logged while disabled: %q", out.String())
	}
}

// A log file given while frozen is opened, in append mode, only at the first line after.
func TestDeferredLogFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := writeFile(path, "old\n"); err != nil {
		t.Fatal(err)
	}
	frozen := true
	lg := NewLogger(nil, path, true)
	lg.Enabled = func() bool { return !frozen }
	lg.Debugf("while frozen")
	frozen = false
	lg.Debugf("after thaw")
	b, _ := readFile(path)
	if !strings.HasPrefix(b, "old\n") || strings.Contains(b, "while frozen") || !strings.HasSuffix(b, ": debug: after thaw\n") {
		t.Fatalf("log file %q", b)
	}
}
