package bench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/qgakit/qgakit/harness/qga"
)

// MaxReadCount is guest-file-read's largest count (48 MiB, GUEST_FILE_READ_COUNT_MAX of qemu-ga
// 7.2): the fewest round trips for a big file.
const MaxReadCount = 48 << 20

// BenchFileSize is the size of the file the read benchmark copies out of the guest.
const BenchFileSize = 64 << 20

// Agent is a connection to an agent under measurement: the harness's client on a connection
// that notes when bytes last arrived, so that a timing ends when the reply is in rather than
// after the client has parsed it (two JSON decodings of a 64 MB reply take longer than some
// agents take to send it).
type Agent struct {
	*qga.Client
	conn *timedConn
}

// NewAgent wraps an established connection to an agent.
func NewAgent(conn net.Conn) *Agent {
	tc := &timedConn{Conn: conn}
	return &Agent{Client: qga.New(tc), conn: tc}
}

// DialAgent connects to an agent's socket (a VM's agent chardev, a unix-listen agent).
func DialAgent(ctx context.Context, path string) (*Agent, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial agent socket %s: %w", path, err)
	}
	return NewAgent(conn), nil
}

// timedConn records when a Read last returned bytes.
type timedConn struct {
	net.Conn
	mu   sync.Mutex
	last time.Time
}

func (c *timedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		now := time.Now()
		c.mu.Lock()
		c.last = now
		c.mu.Unlock()
	}
	return n, err
}

func (c *timedConn) lastRead() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// call runs one command and returns the time from the request to the arrival of the reply's
// last bytes.
func (a *Agent) call(ctx context.Context, cmd string, args, ret any) (time.Duration, error) {
	t0 := time.Now()
	err := a.Call(ctx, cmd, args, ret)
	return a.conn.lastRead().Sub(t0), err
}

// Ping runs n guest-ping calls and returns each round trip.
func Ping(ctx context.Context, a *Agent, n int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for range n {
		d, err := a.call(ctx, "guest-ping", nil, nil)
		if err != nil {
			return out, fmt.Errorf("guest-ping: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}

// FileRead copies the file at path out through the agent (guest-file-open, guest-file-read of
// MaxReadCount until eof, guest-file-close) and returns the time the agent took to answer those
// calls. The bytes must hash to wantSHA256 and number size, or the run is an error: a fast wrong
// read is not a result.
func FileRead(ctx context.Context, a *Agent, path string, size int64, wantSHA256 [32]byte) (time.Duration, error) {
	var spent time.Duration
	call := func(cmd string, args, ret any) error {
		d, err := a.call(ctx, cmd, args, ret)
		spent += d
		return err
	}
	var h int64
	if err := call("guest-file-open", map[string]any{"path": path, "mode": "r"}, &h); err != nil {
		return 0, fmt.Errorf("guest-file-open %s: %w", path, err)
	}
	hash := sha256.New()
	var total int64
	for {
		var r struct {
			Count int64  `json:"count"`
			Buf   string `json:"buf-b64"`
			EOF   bool   `json:"eof"`
		}
		if err := call("guest-file-read", map[string]any{"handle": h, "count": MaxReadCount}, &r); err != nil {
			return 0, fmt.Errorf("guest-file-read after %d bytes: %w", total, err)
		}
		b, err := base64.StdEncoding.DecodeString(r.Buf)
		if err != nil {
			return 0, fmt.Errorf("guest-file-read after %d bytes: buf-b64: %w", total, err)
		}
		if int64(len(b)) != r.Count {
			return 0, fmt.Errorf("guest-file-read after %d bytes: count %d but %d bytes", total, r.Count, len(b))
		}
		hash.Write(b)
		total += r.Count
		if r.EOF || r.Count == 0 {
			break
		}
		if total > size {
			return 0, fmt.Errorf("guest-file-read: %d bytes and no eof, the file has %d", total, size)
		}
	}
	if err := call("guest-file-close", map[string]any{"handle": h}, nil); err != nil {
		return 0, fmt.Errorf("guest-file-close: %w", err)
	}
	if total != size {
		return 0, fmt.Errorf("read %d bytes of %s, it has %d", total, path, size)
	}
	if got := [32]byte(hash.Sum(nil)); got != wantSHA256 {
		return 0, fmt.Errorf("the bytes read from %s hash to %x, the file to %x", path, got, wantSHA256)
	}
	return spent, nil
}

// MBps is the throughput of size bytes in d, in 10^6 bytes per second.
func MBps(size int64, d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }

// sendSync writes what the harness's client writes to resynchronise (0xFF, then
// guest-sync-delimited) with a fresh id, and returns the id.
func sendSync(ctx context.Context, a *Agent) (int64, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := int64(binary.LittleEndian.Uint64(b[:]) >> 12) // exact in a float64: agents may use doubles
	req := fmt.Appendf([]byte{0xFF}, `{"execute": "guest-sync-delimited", "arguments": {"id": %d}}`, id)
	if err := a.Send(ctx, req); err != nil {
		return 0, err
	}
	return id, nil
}

// awaitSync reads replies until the delimited one that returns id, and returns when its last
// bytes came. Anything else (a stale reply of an agent that was killed, an error about the
// 0xFF) is skipped.
func awaitSync(ctx context.Context, a *Agent, id int64) (time.Time, error) {
	for {
		r, err := a.ReadReply(ctx)
		if err != nil {
			return time.Time{}, fmt.Errorf("wait for the sync reply: %w", err)
		}
		at := a.conn.lastRead()
		var got int64
		if r.Delimited && r.Return != nil && json.Unmarshal(r.Return, &got) == nil && got == id {
			return at, nil
		}
	}
}
