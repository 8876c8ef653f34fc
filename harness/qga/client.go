// Package qga is the harness's guest agent client. It talks to the agent through the host end
// of the agent's virtio-serial chardev (a unix socket), or to an agent in unix-listen mode.
//
// The wire is the one qemu-ga documents: JSON requests in, one reply line (JSON followed by
// "\n") out, and for guest-sync-delimited a 0xFF byte before the reply. The client trusts
// nothing about the stream's state after anything went wrong: the agent keeps partial input
// across host reconnects, and a late reply to a request the client stopped waiting for would be
// read as the answer to the next one. So after a timeout, a reconnect, or a no-reply command,
// the next Call first runs Sync (0xFF, then guest-sync-delimited with a random id, skipping
// everything up to the reply carrying that id).
//
// A Client is safe for concurrent use, but runs one exchange at a time.
package qga

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/qgakit/qgakit/harness/transcript"
)

// Error is an error reply from the agent: {"error": {"class": Class, "desc": Desc}}.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "agent error " + e.Class + ": " + e.Desc }

// Reply is one reply line as the agent sent it.
type Reply struct {
	// Raw is the line without its leading 0xFF and trailing newline.
	Raw []byte
	// Delimited is set when the line was preceded by 0xFF (guest-sync-delimited).
	Delimited bool
	// Return is the "return" member, nil when there was none.
	Return json.RawMessage
	// Err is the "error" member, nil when there was none.
	Err *Error
	// ID is the "id" member, nil when there was none.
	ID json.RawMessage
	// DecodeErr is set when the line is not a JSON object; the other fields are then empty.
	DecodeErr error
}

// DefaultNoReplyWindow is how long CallNoReply listens for an error reply when the caller does
// not say. The reference answers errors of no-reply commands within a few hundred milliseconds
// even under TCG.
const DefaultNoReplyWindow = 2 * time.Second

// Client is a connection to a guest agent.
type Client struct {
	mu    sync.Mutex
	path  string // empty for New: no reconnect
	conn  net.Conn
	buf   []byte // read but not yet consumed
	dirty bool   // the stream's state is unknown: Sync before the next Call
	tr    *Transcript
}

// Dial connects to the agent's socket at path. It does not talk to the agent: call Sync.
func Dial(ctx context.Context, path string) (*Client, error) {
	c := &Client{path: path, tr: transcript.NewEscaped(), dirty: true}
	if err := c.dial(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// New wraps an established connection (one end of a socketpair, say). Such a client cannot
// Reconnect.
func New(conn net.Conn) *Client {
	c := &Client{conn: conn, tr: transcript.NewEscaped(), dirty: true}
	c.tr.Notef("attached to %s", conn.RemoteAddr())
	return c
}

func (c *Client) dial(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return fmt.Errorf("dial agent socket %s: %w", c.path, err)
	}
	c.conn = conn
	c.buf = nil
	c.dirty = true
	c.tr.Notef("connected to %s", c.path)
	return nil
}

// Transcript is the record of every byte sent and every line received, across reconnects.
func (c *Client) Transcript() *Transcript { return c.tr }

// Close closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	c.tr.Notef("closed")
	return err
}

// Reconnect closes the connection and dials the same socket again. Unread input is dropped, and
// the next Call synchronises first.
func (c *Client) Reconnect(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.path == "" {
		return errors.New("reconnect: client was made from a connection, not a path")
	}
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
	return c.dial(ctx)
}

// Sync resynchronises the stream: it sends 0xFF (which makes the agent drop any partial input)
// and guest-sync-delimited with a random id, then skips everything up to the reply with that id.
// Skipped input (stale replies, the reference's "JSON parse error, stray '\uFFFD'" about the 0xFF)
// is kept in the transcript.
func (c *Client) Sync(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sync(ctx)
}

func (c *Client) sync(ctx context.Context) error {
	if c.conn == nil {
		return errors.New("sync: not connected")
	}
	id := randomID()
	req := fmt.Appendf([]byte{0xFF}, `{"execute": "guest-sync-delimited", "arguments": {"id": %d}}`, id)
	if err := c.write(ctx, req); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	for {
		skipped, err := c.readUntil(ctx, 0xFF, time.Time{})
		if len(skipped) > 1 {
			c.tr.Add(DirDiscard, skipped[:len(skipped)-1])
		}
		if err != nil {
			c.dirty = true
			return fmt.Errorf("sync: wait for the 0xFF delimiter: %w", err)
		}
		line, err := c.readUntil(ctx, '\n', time.Time{})
		if err != nil {
			c.dirty = true
			return fmt.Errorf("sync: read the delimited reply: %w", err)
		}
		r := parseReply(bytes.TrimRight(line, "\r\n"), true)
		c.tr.Add(DirRecv, append([]byte{0xFF}, r.Raw...))
		var got int64
		if r.Return != nil && json.Unmarshal(r.Return, &got) == nil && got == id {
			c.dirty = false
			return nil
		}
		c.tr.Notef("sync: skipped a delimited reply that is not for id %d", id)
	}
}

// SyncUntil repeats Sync, each attempt bounded by attempt, until one succeeds or ctx ends. It is
// how to wait for an agent that is starting (or restarting after its port was re-plugged): a
// sync sent before the agent read its port is either lost or answered late, and the 0xFF and
// random id of the next attempt make both harmless.
func (c *Client) SyncUntil(ctx context.Context, attempt time.Duration) error {
	var last error
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := c.Sync(actx)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return fmt.Errorf("agent did not answer %d sync attempts: %w (last: %w)", n, context.Cause(ctx), last)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("agent connection lost while syncing: %w", err)
		}
	}
}

// Call runs cmd with args (anything that marshals to a JSON object, or nil) and unmarshals the
// "return" value into ret when ret is not nil. An error reply is a *Error (use errors.As). The
// context bounds the whole exchange.
func (c *Client) Call(ctx context.Context, cmd string, args, ret any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, err := c.call(ctx, cmd, args, time.Time{})
	if err != nil {
		return err
	}
	if r.Err != nil {
		return r.Err
	}
	if ret != nil {
		if r.Return == nil {
			return fmt.Errorf("%s: reply has no return value: %s", cmd, r.Raw)
		}
		if err := json.Unmarshal(r.Return, ret); err != nil {
			return fmt.Errorf("%s: decode return value: %w", cmd, err)
		}
	}
	return nil
}

// CallNoReply runs one of the commands that send no reply on success (guest-shutdown,
// guest-suspend-*). An error reply within window (DefaultNoReplyWindow when window <= 0) is
// returned as a *Error; silence, or the connection closing, is success — which the caller must
// confirm through QMP (SHUTDOWN, SUSPEND, ...). Any later reply would be stale, so the next Call
// synchronises first.
func (c *Client) CallNoReply(ctx context.Context, cmd string, args any, window time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if window <= 0 {
		window = DefaultNoReplyWindow
	}
	end := time.Now().Add(window)
	// When ctx ends first, a timeout is the caller's deadline, not the silence we listen for.
	ctxFirst := false
	if d, ok := ctx.Deadline(); ok && d.Before(end) {
		ctxFirst = true
	}
	r, err := c.call(ctx, cmd, args, end)
	switch {
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !ctxFirst && ctx.Err() == nil:
		c.tr.Notef("%s: no reply within %v (success for a no-reply command)", cmd, window)
		c.dirty = true
		return nil
	case errors.Is(err, io.EOF):
		c.tr.Notef("%s: connection closed without a reply", cmd)
		c.dirty = true
		return nil
	case err != nil:
		return err
	case r.Err != nil:
		return r.Err
	default:
		return fmt.Errorf("%s: unexpected reply to a command that has no success response: %s", cmd, r.Raw)
	}
}

// call sends a request and reads its reply, skipping stale delimited (sync) replies. deadline,
// when set, bounds the read in addition to ctx.
func (c *Client) call(ctx context.Context, cmd string, args any, deadline time.Time) (*Reply, error) {
	if c.conn == nil {
		return nil, fmt.Errorf("%s: not connected", cmd)
	}
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("%s: marshal arguments: %w", cmd, err)
	}
	if c.dirty {
		c.tr.Notef("%s: stream state unknown, synchronising first", cmd)
		if err := c.sync(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
	}
	if err := c.write(ctx, b); err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	for {
		r, err := c.readReply(ctx, deadline)
		if err != nil {
			c.dirty = true
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		if r.Delimited {
			c.tr.Notef("%s: skipped a stale delimited reply", cmd)
			continue
		}
		return r, nil
	}
}

// Send writes raw bytes as they are, for protocol specs (garbage, partial JSON, 0xFF). It
// leaves the stream's state to the caller: a Call after Send does not synchronise by itself.
func (c *Client) Send(ctx context.Context, raw []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return errors.New("send: not connected")
	}
	if err := c.write(ctx, raw); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// ReadReply reads the next reply line, whole however long it is. A line that is not a JSON
// object is returned with DecodeErr set. The error is for I/O only (a timeout wraps
// os.ErrDeadlineExceeded or the context's error; a closed connection is io.EOF).
func (c *Client) ReadReply(ctx context.Context) (*Reply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil, errors.New("read reply: not connected")
	}
	return c.readReply(ctx, time.Time{})
}

func (c *Client) readReply(ctx context.Context, deadline time.Time) (*Reply, error) {
	line, err := c.readUntil(ctx, '\n', deadline)
	if err != nil {
		return nil, fmt.Errorf("read reply: %w", err)
	}
	line = bytes.TrimRight(line, "\r\n")
	delimited := false
	if len(line) > 0 && line[0] == 0xFF {
		delimited = true
		line = line[1:]
	}
	if delimited {
		c.tr.Add(DirRecv, append([]byte{0xFF}, line...))
	} else {
		c.tr.Add(DirRecv, line)
	}
	return parseReply(line, delimited), nil
}

func parseReply(line []byte, delimited bool) *Reply {
	r := &Reply{Raw: append([]byte(nil), line...), Delimited: delimited}
	var obj struct {
		Return json.RawMessage `json:"return"`
		Error  *Error          `json:"error"`
		ID     json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(line, &obj); err != nil {
		r.DecodeErr = err
		return r
	}
	r.Return, r.Err, r.ID = obj.Return, obj.Error, obj.ID
	return r
}

func (c *Client) write(ctx context.Context, b []byte) error {
	c.tr.Add(DirSend, b)
	release := c.bound(ctx, time.Time{}, c.conn.SetWriteDeadline)
	defer release()
	if _, err := c.conn.Write(b); err != nil {
		return c.ioErr(ctx, "write", err)
	}
	return nil
}

// readUntil returns the input up to and including delim, reading as much as it takes. Input
// read before an error stays buffered for the next call, so a timed-out read loses nothing.
func (c *Client) readUntil(ctx context.Context, delim byte, deadline time.Time) ([]byte, error) {
	scanned := 0
	for {
		if i := bytes.IndexByte(c.buf[scanned:], delim); i >= 0 {
			n := scanned + i + 1
			out := append([]byte(nil), c.buf[:n]...)
			c.buf = append(c.buf[:0], c.buf[n:]...)
			return out, nil
		}
		scanned = len(c.buf)
		if err := c.fill(ctx, deadline); err != nil {
			return nil, err
		}
	}
}

func (c *Client) fill(ctx context.Context, deadline time.Time) error {
	if cap(c.buf)-len(c.buf) < 64<<10 {
		grown := make([]byte, len(c.buf), 2*cap(c.buf)+64<<10)
		copy(grown, c.buf)
		c.buf = grown
	}
	release := c.bound(ctx, deadline, c.conn.SetReadDeadline)
	defer release()
	n, err := c.conn.Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+n]
	if err != nil && n == 0 {
		return c.ioErr(ctx, "read", err)
	}
	return nil
}

// bound applies the earlier of ctx's deadline and deadline to the connection, and cuts the I/O
// short when ctx is cancelled. The returned func undoes both; it waits for a concurrent
// cancellation to finish so that it cannot leave a stale deadline behind.
func (c *Client) bound(ctx context.Context, deadline time.Time, set func(time.Time) error) func() {
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	_ = set(deadline)
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = set(time.Unix(1, 0))
		close(done)
	})
	return func() {
		if !stop() {
			<-done
		}
		_ = set(time.Time{})
	}
}

// ioErr names the context's error when the context is why the I/O stopped: the connection's
// deadline can fire a moment before the context marks itself done.
func (c *Client) ioErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w (%w)", op, context.Cause(ctx), err)
	}
	if d, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
		return fmt.Errorf("%s: %w (%w)", op, context.DeadlineExceeded, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// randomID is positive and below 2^53, so that any JSON implementation keeps it exact.
func randomID() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return int64(binary.LittleEndian.Uint64(b[:])&(1<<53-1)) | 1
}
