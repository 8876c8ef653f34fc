package qga

import (
	"encoding/json"
	"net"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeAgent is an in-process agent on the other end of a socketpair. It frames input the way
// qemu-ga does for the inputs these tests send (0xFF flushes partial input and earns the
// reference's stray-byte error; a request is complete when its braces balance) and answers
// through handle, which returns the bytes to write (nil for silence).
type fakeAgent struct {
	conn   net.Conn
	handle func(cmd string, args json.RawMessage) []byte
	// deaf is how many syncs to ignore, like an agent that is not up yet.
	deaf int

	mu   sync.Mutex
	seen []string // commands in the order they arrived
	done chan struct{}
}

const strayReply = `{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}` + "\n"

func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// newFake returns a client connected to a fake agent; preamble is written before any input,
// like output left over from an earlier connection.
func newFake(t *testing.T, preamble string, handle func(cmd string, args json.RawMessage) []byte) (*Client, *fakeAgent) {
	t.Helper()
	a, b := socketpair(t)
	f := &fakeAgent{conn: b, handle: handle, done: make(chan struct{})}
	if preamble != "" {
		b.Write([]byte(preamble)) // fits the socket buffer
	}
	go f.serve()
	c := New(a)
	t.Cleanup(func() {
		c.Close()
		b.Close()
		<-f.done
	})
	return c, f
}

func (f *fakeAgent) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func (f *fakeAgent) serve() {
	defer close(f.done)
	var msg []byte
	depth, inStr, esc := 0, false, false
	buf := make([]byte, 64<<10)
	for {
		n, err := f.conn.Read(buf)
		for _, ch := range buf[:n] {
			if ch == 0xFF {
				msg, depth, inStr, esc = nil, 0, false, false
				f.conn.Write([]byte(strayReply))
				continue
			}
			if depth == 0 && ch != '{' {
				continue // whitespace between requests
			}
			msg = append(msg, ch)
			switch {
			case esc:
				esc = false
			case inStr && ch == '\\':
				esc = true
			case ch == '"':
				inStr = !inStr
			case !inStr && ch == '{':
				depth++
			case !inStr && ch == '}':
				depth--
				if depth == 0 {
					f.dispatch(msg)
					msg = nil
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *fakeAgent) dispatch(msg []byte) {
	var req struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if err := json.Unmarshal(msg, &req); err != nil {
		f.conn.Write([]byte(`{"error": {"class": "GenericError", "desc": "fake: bad request"}}` + "\n"))
		return
	}
	f.mu.Lock()
	f.seen = append(f.seen, req.Execute)
	f.mu.Unlock()
	if req.Execute == "guest-sync-delimited" {
		f.mu.Lock()
		deaf := f.deaf > 0
		f.deaf--
		f.mu.Unlock()
		if deaf {
			return
		}
		var a struct{ ID int64 }
		// An id the fake cannot read draws an error instead of a sync reply for id 0, which
		// a client under test might accept.
		if err := json.Unmarshal(req.Arguments, &a); err != nil {
			f.conn.Write([]byte(`{"error": {"class": "GenericError", "desc": "fake: bad sync arguments"}}` + "\n"))
			return
		}
		f.conn.Write([]byte("\xff{\"return\": " + itoa(a.ID) + "}\n"))
		return
	}
	if out := f.handle(req.Execute, req.Arguments); out != nil {
		f.conn.Write(out)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }
