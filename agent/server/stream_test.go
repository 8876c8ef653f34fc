package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/qgakit/qgakit/agent/commands"
	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/agent/state"
	"github.com/qgakit/qgakit/agent/transport"
	"github.com/qgakit/qgakit/schema"
)

// recordingChannel is a real channel whose streams remember the largest single WriteAll.
type recordingChannel struct {
	transport.Channel
	mu      sync.Mutex
	largest int
	writes  int
	total   int
}

func (c *recordingChannel) Accept(ctx context.Context) (transport.Stream, error) {
	st, err := c.Channel.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return &recordingStream{Stream: st, c: c}, nil
}

type recordingStream struct {
	transport.Stream
	c *recordingChannel
}

func (s *recordingStream) WriteAll(ctx context.Context, p []byte) error {
	s.c.mu.Lock()
	s.c.largest = max(s.c.largest, len(p))
	s.c.writes++
	s.c.total += len(p)
	s.c.mu.Unlock()
	return s.Stream.WriteAll(ctx, p)
}

// A guest-file-read of many MiB through the real commands: the reply arrives byte for byte as
// the reference frames it, the debug log gives its exact size before it is sent, and it
// reaches the channel in pieces instead of as one 16 MiB write.
func TestFileReadReplyIsStreamed(t *testing.T) {
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(schema.MustLoad(), dispatch.Options{Frozen: st.Frozen})
	commands.Register(d, &commands.Env{State: st, Version: "test", Info: d.Info})
	data := make([]byte, 12<<20)
	rand.New(rand.NewSource(4)).Read(data)
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	rec := &recordingChannel{}
	h, stop := startWrappedDevice(t, &Server{Dispatcher: d, Log: NewLogger(&log, "", true)},
		func(ch transport.Channel) transport.Channel { rec.Channel = ch; return rec })

	h.send(t, fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q}}`, path))
	open := h.line(t)
	m := regexp.MustCompile(`^\{"return": ([0-9]+)\}\n$`).FindStringSubmatch(open)
	if m == nil {
		t.Fatalf("open: %q", open)
	}
	handle, _ := strconv.Atoi(m[1])
	h.send(t, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d},"id":"r"}`, handle, 48<<20))
	got := h.line(t)
	want := `{"return": {"count": 12582912, "buf-b64": "` + base64.StdEncoding.EncodeToString(data) +
		`", "eof": true}, "id": "r"}` + "\n"
	if got != want {
		t.Fatalf("reply of %d bytes differs from the expected %d bytes; starts %.80q", len(got), len(want), got)
	}
	h.send(t, `{"execute":"guest-ping"}`)
	if l := h.line(t); l != "{\"return\": {}}\n" {
		t.Fatalf("ping after the read: %q", l)
	}

	rec.mu.Lock()
	largest, writes := rec.largest, rec.writes
	rec.mu.Unlock()
	t.Logf("%d-byte reply in %d writes, the largest %d bytes", len(want), writes, largest)
	if largest > 256<<10 {
		t.Errorf("the reply went out in a %d-byte write: it was built whole", largest)
	}
	// Serve has returned once stop does, so every log line is written.
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if wantLine := fmt.Sprintf("debug: sending data, count: %d\n", len(want)); !bytes.Contains(log.Bytes(), []byte(wantLine)) {
		t.Errorf("the log lacks %q:\n%s", wantLine, log.Bytes())
	}
}

// releasing is a reply value that holds memory to give back, like a large read's buffer.
type releasing struct {
	Data protocol.Base64 `json:"data"`
	// releases counts Release calls; writtenAt is how many bytes the channel had taken at the
	// first one.
	releases  *atomic.Int32
	writtenAt *atomic.Int64
	ch        *recordingChannel
}

func (r releasing) Release() {
	if r.releases.Add(1) == 1 {
		r.ch.mu.Lock()
		r.writtenAt.Store(int64(r.ch.total))
		r.ch.mu.Unlock()
	}
}

// A reply value that is a protocol.Releaser is released once, after the last byte of its
// reply went to the channel and before the next message is answered.
func TestReleasersAreReleasedAfterTheirReply(t *testing.T) {
	rec := &recordingChannel{}
	var releases atomic.Int32
	var writtenAt atomic.Int64
	d := dispatch.New(schema.MustLoad(), dispatch.Options{})
	d.Register("guest-ping", func(context.Context, dispatch.Args) (any, error) { return nil, nil })
	d.Register("guest-file-read", func(context.Context, dispatch.Args) (any, error) {
		return releasing{Data: bytes.Repeat([]byte("x"), 1<<20), releases: &releases, writtenAt: &writtenAt, ch: rec}, nil
	})
	h, _ := startWrappedDevice(t, &Server{Dispatcher: d},
		func(ch transport.Channel) transport.Channel { rec.Channel = ch; return rec })
	h.send(t, `{"execute":"guest-file-read","arguments":{"handle":1}}`)
	reply := h.line(t)
	h.send(t, `{"execute":"guest-ping"}`)
	if l := h.line(t); l != "{\"return\": {}}\n" {
		t.Fatalf("ping: %q", l)
	}
	if n := releases.Load(); n != 1 {
		t.Fatalf("released %d times before the next reply, want once", n)
	}
	if at := writtenAt.Load(); at != int64(len(reply)) {
		t.Fatalf("released after %d bytes of a %d-byte reply", at, len(reply))
	}
}
