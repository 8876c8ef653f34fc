package qga

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func pingOnly(cmd string, _ json.RawMessage) []byte {
	switch cmd {
	case "guest-ping":
		return []byte(`{"return": {}}` + "\n")
	case "guest-get-time":
		return []byte(`{"return": 1700000000123456789}` + "\n")
	}
	return []byte(`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}` + "\n")
}

func TestSyncSkipsStaleOutput(t *testing.T) {
	// Left over from an earlier conversation: a plain reply, a delimited reply to another id,
	// half a line. All of it comes before the 0xFF of our sync's reply and must be skipped.
	stale := `{"return": {"stale": true}}` + "\n\xff" + `{"return": 42}` + "\n" + `{"retu`
	c, f := newFake(t, stale, pingOnly)
	ctx := ctxT(t)
	if err := c.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	var got struct {
		Stale bool `json:"stale"`
	}
	if err := c.Call(ctx, "guest-ping", nil, &got); err != nil || got.Stale {
		t.Fatalf("guest-ping after Sync = %+v, %v: read a stale reply", got, err)
	}
	if cmds := f.commands(); strings.Join(cmds, ",") != "guest-sync-delimited,guest-ping" {
		t.Errorf("agent saw %v, want one sync then the ping", cmds)
	}
	tr := transcriptOf(c)
	for _, want := range []string{`xx {"return": {"stale": true}}`, `stray '\uFFFD'`, `\xff{"return": 42}`, `skipped a delimited reply`} {
		if !strings.Contains(tr, want) {
			t.Errorf("transcript lacks %q:\n%s", want, tr)
		}
	}
}

func transcriptOf(c *Client) string {
	var sb strings.Builder
	c.Transcript().WriteTo(&sb)
	return sb.String()
}

func TestCallValuesAndTypedErrors(t *testing.T) {
	c, _ := newFake(t, "", pingOnly)
	ctx := ctxT(t)
	var ns int64
	if err := c.Call(ctx, "guest-get-time", nil, &ns); err != nil || ns != 1700000000123456789 {
		t.Errorf("guest-get-time = %d, %v", ns, err)
	}
	err := c.Call(ctx, "guest-nope", map[string]any{"x": 1}, nil)
	var qe *Error
	if !errors.As(err, &qe) {
		t.Fatalf("error %v (%T) is not a *qga.Error", err, err)
	}
	if qe.Class != "CommandNotFound" || qe.Desc != "The command guest-nope has not been found" {
		t.Errorf("error = %+v", qe)
	}
	// A reply without "return" cannot fill ret.
	c2, _ := newFake(t, "", func(string, json.RawMessage) []byte { return []byte(`{"id": 1}` + "\n") })
	if err := c2.Call(ctx, "guest-ping", nil, &ns); err == nil {
		t.Error("a reply without return decoded into ret")
	}
}

func TestCallReadsHugeRepliesWhole(t *testing.T) {
	const size = 50 << 20 // more than guest-file-read's 48 MiB cap, base64-encoded to ~67 MB
	data := strings.Repeat("q", size)
	reply := `{"return": {"count": 52428800, "buf-b64": "` + base64.StdEncoding.EncodeToString([]byte(data)) + `", "eof": false}}` + "\n"
	c, _ := newFake(t, "", func(cmd string, _ json.RawMessage) []byte {
		if cmd == "guest-file-read" {
			return []byte(reply)
		}
		return pingOnly(cmd, nil)
	})
	// Generous: under -race, encoding and decoding 67 MB takes most of a minute.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var r struct {
		Count int    `json:"count"`
		Buf   []byte `json:"buf-b64"`
	}
	if err := c.Call(ctx, "guest-file-read", map[string]any{"handle": 1, "count": size}, &r); err != nil {
		t.Fatalf("guest-file-read: %v", err)
	}
	if r.Count != size || len(r.Buf) != size || string(r.Buf[size-3:]) != "qqq" {
		t.Errorf("read count %d, %d bytes", r.Count, len(r.Buf))
	}
	if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
		t.Errorf("ping after a huge reply: %v", err)
	}
	if tr := transcriptOf(c); len(tr) > 1<<20 || !strings.Contains(tr, "truncated") {
		t.Errorf("transcript keeps %d bytes; huge replies must be truncated", len(tr))
	}
}

func TestCallNoReply(t *testing.T) {
	ctx := ctxT(t)
	var released = make(chan struct{})
	c, f := newFake(t, "", func(cmd string, args json.RawMessage) []byte {
		switch cmd {
		case "guest-shutdown":
			if strings.Contains(string(args), "bogus") {
				return []byte(`{"error": {"class": "GenericError", "desc": "mode is invalid (valid values are: halt|powerdown|reboot"}}` + "\n")
			}
			return nil
		case "guest-suspend-ram":
			return []byte(`{"return": {}}` + "\n")
		case "guest-suspend-disk":
			<-released // a late answer, after the window closed
			return []byte(`{"error": {"class": "GenericError", "desc": "late"}}` + "\n")
		}
		return pingOnly(cmd, nil)
	})

	if err := c.CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "powerdown"}, 200*time.Millisecond); err != nil {
		t.Errorf("silent guest-shutdown = %v, want success", err)
	}
	err := c.CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "bogus"}, 10*time.Second)
	var qe *Error
	if !errors.As(err, &qe) || !strings.HasPrefix(qe.Desc, "mode is invalid") {
		t.Errorf("guest-shutdown bogus = %v, want the agent's error", err)
	}
	if err := c.CallNoReply(ctx, "guest-suspend-ram", nil, 10*time.Second); err == nil || errors.As(err, &qe) {
		t.Errorf("a success reply to a no-reply command = %v, want a protocol error", err)
	}
	if err := c.CallNoReply(ctx, "guest-suspend-disk", nil, 200*time.Millisecond); err != nil {
		t.Errorf("silent guest-suspend-disk = %v", err)
	}
	close(released)
	// The late error must not be taken for the ping's reply: the client syncs first.
	if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatalf("ping after a late reply: %v", err)
	}
	cmds := f.commands()
	if len(cmds) < 2 || cmds[len(cmds)-2] != "guest-sync-delimited" || cmds[len(cmds)-1] != "guest-ping" {
		t.Errorf("agent saw %v; want a sync right before the ping", cmds)
	}

	// A connection that closes is silence too (QEMU exited after the guest powered off).
	var f2 *fakeAgent
	c2, f2 := newFake(t, "", func(cmd string, _ json.RawMessage) []byte {
		if cmd == "guest-shutdown" {
			f2.conn.Close()
		}
		return nil
	})
	if err := c2.CallNoReply(ctx, "guest-shutdown", nil, time.Minute); err != nil {
		t.Errorf("guest-shutdown then hang-up = %v, want success", err)
	}
}

func TestTimeoutThenResync(t *testing.T) {
	release := make(chan struct{})
	c, _ := newFake(t, "", func(cmd string, _ json.RawMessage) []byte {
		if cmd == "guest-fsfreeze-freeze" {
			<-release
			return []byte(`{"return": 3}` + "\n")
		}
		return pingOnly(cmd, nil)
	})
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var n int
	err := c.Call(short, "guest-fsfreeze-freeze", nil, &n)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow call = %v, want context.DeadlineExceeded", err)
	}
	close(release)
	ctx := ctxT(t)
	var ns int64
	if err := c.Call(ctx, "guest-get-time", nil, &ns); err != nil || ns != 1700000000123456789 {
		t.Errorf("call after a timeout = %d, %v: took the stale reply", ns, err)
	}
	// Cancellation (not a deadline) also stops a read.
	cctx, ccancel := context.WithCancel(context.Background())
	// Whether the cancel lands before or during the read, the read must end with it.
	go func() { time.Sleep(50 * time.Millisecond); ccancel() }()
	if _, err := c.ReadReply(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadReply on cancel = %v, want context.Canceled", err)
	}
}

func TestSendAndReadReplyRaw(t *testing.T) {
	a, b := socketpair(t)
	defer b.Close()
	c := New(a)
	defer c.Close()
	ctx := ctxT(t)
	if err := c.Send(ctx, []byte("@\xfe")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2)
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "@\xfe" {
		t.Fatalf("agent got %q, %v: Send must not alter bytes", got, err)
	}
	// Half a line, then a timeout: nothing is lost.
	b.Write([]byte(`{"error": {"class": "GenericError", "desc": "JSON parse error, stray '@'"`))
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := c.ReadReply(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReadReply of half a line = %v, want a deadline error", err)
	}
	b.Write([]byte("}}\n\xff{\"return\": 5, \"id\": \"x\"}\nnot json\n"))
	r, err := c.ReadReply(ctx)
	if err != nil || r.Err == nil || r.Err.Desc != "JSON parse error, stray '@'" || r.Delimited {
		t.Fatalf("ReadReply = %+v, %v", r, err)
	}
	r, err = c.ReadReply(ctx)
	if err != nil || !r.Delimited || string(r.Return) != "5" || string(r.ID) != `"x"` {
		t.Errorf("delimited ReadReply = %+v, %v", r, err)
	}
	r, err = c.ReadReply(ctx)
	if err != nil || r.DecodeErr == nil || string(r.Raw) != "not json" {
		t.Errorf("non-JSON line = %+v, %v", r, err)
	}
	b.Close()
	if _, err := c.ReadReply(ctx); !errors.Is(err, io.EOF) {
		t.Errorf("ReadReply after hang-up = %v, want io.EOF", err)
	}
}

func TestReconnect(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan *fakeAgent, 2)
	go func() {
		for i := 0; ; i++ {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			gen := i
			f := &fakeAgent{conn: conn, done: make(chan struct{}), handle: func(cmd string, _ json.RawMessage) []byte {
				if cmd == "guest-get-time" {
					return []byte(`{"return": ` + itoa(int64(gen)) + `}` + "\n")
				}
				return pingOnly(cmd, nil)
			}}
			if gen == 0 {
				conn.Write([]byte(`{"return": {}}` + "\n")) // unread when the client reconnects
			}
			go f.serve()
			conns <- f
		}
	}()
	ctx := ctxT(t)
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var gen int64
	if err := c.Call(ctx, "guest-get-time", nil, &gen); err != nil || gen != 0 {
		t.Fatalf("first connection: %d, %v", gen, err)
	}
	first := <-conns
	if err := c.Reconnect(ctx); err != nil {
		t.Fatal(err)
	}
	<-first.done // the old connection is closed
	if err := c.Call(ctx, "guest-get-time", nil, &gen); err != nil || gen != 1 {
		t.Errorf("after Reconnect: %d, %v; want the second connection's answer", gen, err)
	}
	second := <-conns
	if cmds := second.commands(); len(cmds) == 0 || cmds[0] != "guest-sync-delimited" {
		t.Errorf("second connection saw %v; a reconnect must sync first", cmds)
	}
	x, y := socketpair(t)
	defer y.Close()
	if err := New(x).Reconnect(ctx); err == nil {
		t.Error("Reconnect of a client made from a connection succeeded")
	}
}

func TestSyncUntilWaitsForAnAgentThatIsNotUpYet(t *testing.T) {
	c, f := newFake(t, "", pingOnly)
	f.mu.Lock()
	f.deaf = 3
	f.mu.Unlock()
	ctx := ctxT(t)
	if err := c.SyncUntil(ctx, 100*time.Millisecond); err != nil {
		t.Fatalf("SyncUntil: %v", err)
	}
	syncs := 0
	for _, cmd := range f.commands() {
		if cmd == "guest-sync-delimited" {
			syncs++
		}
	}
	if syncs != 4 {
		t.Errorf("agent saw %d syncs, want 3 ignored and 1 answered", syncs)
	}
	if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
		t.Errorf("ping after SyncUntil: %v", err)
	}

	c2, f2 := newFake(t, "", pingOnly)
	f2.mu.Lock()
	f2.deaf = 1 << 30
	f2.mu.Unlock()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := c2.SyncUntil(short, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("SyncUntil on a deaf agent = %v, want a deadline error", err)
	}
}
