package qmp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// defaultDialTimeout bounds the handshake when the caller's context has no deadline: a QEMU that
// accepts but never greets must not hang a test run.
const defaultDialTimeout = 30 * time.Second

// Monitor is a connected QMP monitor. Create it with Dial or NewFromConn.
type Monitor struct {
	mon    *goqmp.SocketMonitor
	tap    *tap
	events *recorder
	tr     *Transcript
	nextID atomic.Uint64
}

// Dial connects to QEMU's QMP unix socket at path and completes the capabilities handshake,
// all within ctx (and within 30 s when ctx has no deadline).
func Dial(ctx context.Context, path string) (*Monitor, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	return NewFromConn(ctx, conn)
}

// NewFromConn runs the QMP handshake on an established connection to QEMU (a dialed socket or
// one end of a socketpair whose other end QEMU got as a file descriptor). The Monitor owns conn.
func NewFromConn(ctx context.Context, conn net.Conn) (*Monitor, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultDialTimeout)
		defer cancel()
	}
	m := &Monitor{events: newRecorder(), tr: &Transcript{}}
	m.tr.Notef("connect %s", conn.RemoteAddr())

	// go-qemu can only dial an address: give it a private abstract socket (no file to clean up)
	// and accept exactly one connection on it.
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	addr := "@qgakit-qmp-" + hex.EncodeToString(nonce[:])
	ln, err := net.Listen("unix", addr)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("listen for go-qemu on %s: %w", addr, err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		acc <- accepted{c, err}
	}()
	deadline, _ := ctx.Deadline()
	mon, err := goqmp.NewSocketMonitor("unix", addr, time.Until(deadline))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("go-qemu dial of the tap: %w", err)
	}
	a := <-acc // the dial has completed, so the accept has too
	if a.err != nil {
		conn.Close()
		return nil, fmt.Errorf("accept go-qemu on the tap: %w", a.err)
	}
	m.mon = mon
	m.tap = newTap(conn, a.c, m.tr, m.events)

	connected := make(chan error, 1)
	go func() { connected <- mon.Connect() }()
	select {
	case err = <-connected:
	case <-ctx.Done():
		m.tap.shutdown() // unblocks Connect
		// Whatever Connect returns now, the handshake was cut short; the context says why.
		_ = <-connected
		err = context.Cause(ctx)
	}
	if err != nil {
		m.tap.shutdown()
		m.tap.pumps.Wait()
		return nil, fmt.Errorf("qmp handshake: %w", err)
	}
	m.tr.Notef("connected to QEMU %s", mon.Version)
	return m, nil
}

// Version is the QEMU version from the greeting, e.g. "7.2.22".
func (m *Monitor) Version() string { return m.mon.Version.String() }

// Transcript is the record of every command, reply and event on this connection.
func (m *Monitor) Transcript() *Transcript { return m.tr }

// Closed is closed once the connection to QEMU has ended.
func (m *Monitor) Closed() <-chan struct{} { return m.tap.closed }

// Close ends the connection. It is safe to call more than once.
func (m *Monitor) Close() error {
	m.tap.shutdown()
	err := m.mon.Disconnect()
	m.tap.pumps.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Execute runs cmd with args (anything that marshals to a JSON object, or nil) and unmarshals
// the "return" value into ret when ret is not nil. An error reply is a *Error (use errors.As);
// a connection that ends first gives ErrClosed. Because args are marshalled as given, this is
// also the way to send commands go-qemu's typed API cannot express (device_add with driver
// properties such as chardev and name).
func (m *Monitor) Execute(ctx context.Context, cmd string, args, ret any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: marshal arguments: %w", cmd, err)
	}
	val, err := m.ExecuteRaw(ctx, b)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if ret != nil {
		if err := json.Unmarshal(val, ret); err != nil {
			return fmt.Errorf("qmp %s: decode return value %s: %w", cmd, val, err)
		}
	}
	return nil
}

// ExecuteRaw sends a command given as a raw JSON object ({"execute": ..., "arguments": ...}) and
// returns the raw "return" value. The Monitor sets the command's "id" (replacing any) to match
// the reply.
func (m *Monitor) ExecuteRaw(ctx context.Context, cmd []byte) (json.RawMessage, error) {
	reply, err := m.roundTrip(ctx, cmd)
	if err != nil {
		return nil, err
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *Error          `json:"error"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return nil, fmt.Errorf("decode reply %s: %w", reply, err)
	}
	if r.Error != nil {
		return nil, r.Error
	}
	return r.Return, nil
}

// roundTrip sends cmd with a fresh id through go-qemu and returns the whole reply line.
func (m *Monitor) roundTrip(ctx context.Context, cmd []byte) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(cmd, &obj); err != nil {
		return nil, fmt.Errorf("command is not a JSON object: %w", err)
	}
	// go-qemu decodes the reply's id into a string, so it must be one.
	id := fmt.Sprintf("qgakit-%d", m.nextID.Add(1))
	obj["id"], _ = json.Marshal(id)
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("marshal command: %w", err)
	}
	select {
	case <-m.tap.closed:
		return nil, ErrClosed
	default:
	}
	ch := m.tap.expect(id)
	defer m.tap.forget(id)
	runErr := make(chan error, 1)
	go func() {
		_, err := m.mon.Run(append(b, '\n'))
		runErr <- err
	}()
	for {
		select {
		case reply := <-ch:
			return reply, nil
		case err := <-runErr:
			// The tap hands the reply over before go-qemu sees it, so a reply that made Run
			// return is already in ch.
			select {
			case reply := <-ch:
				return reply, nil
			default:
			}
			if err == nil {
				continue // cannot happen (see above); keep waiting rather than guess
			}
			select {
			case <-m.tap.closed:
				return nil, ErrClosed
			default:
				return nil, fmt.Errorf("send: %w", err)
			}
		case <-m.tap.closed:
			select {
			case reply := <-ch:
				return reply, nil
			default:
				return nil, ErrClosed
			}
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// Mark returns the current end of the event log: WaitEventAfter(ctx, m.Mark(), ...) waits for
// an event that arrives after this point.
func (m *Monitor) Mark() Pos { return m.events.mark() }

// Events returns every event recorded so far, in wire order.
func (m *Monitor) Events() []Event { return m.events.snapshot() }

// WaitEvent returns the first event since the connection was made with this name (any name when
// empty) for which match (when not nil) is true, waiting for it when it has not come yet.
func (m *Monitor) WaitEvent(ctx context.Context, name string, match func(Event) bool) (Event, error) {
	return m.events.wait(ctx, 0, name, match)
}

// WaitEventAfter is WaitEvent for events at or after position from (see Mark).
func (m *Monitor) WaitEventAfter(ctx context.Context, from Pos, name string, match func(Event) bool) (Event, error) {
	return m.events.wait(ctx, from, name, match)
}

// Status returns the run state of query-status ("running", "paused", "suspended", "shutdown",
// "prelaunch", "inmigrate", ...).
func (m *Monitor) Status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := m.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// Quit asks QEMU to exit. A connection that closes before the reply counts as success: QEMU
// may exit before it is sent.
func (m *Monitor) Quit(ctx context.Context) error {
	err := m.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// Raw returns go-qemu's typed command set on this Monitor. Its commands go through the same
// tap (ids, transcript, typed errors). It has no event stream: use WaitEvent.
func (m *Monitor) Raw() *raw.Monitor { return raw.NewMonitor(rawAdapter{m}) }

// rawAdapter lets go-qemu's raw.Monitor run commands through the tap.
type rawAdapter struct{ m *Monitor }

func (a rawAdapter) Connect() error    { return nil }
func (a rawAdapter) Disconnect() error { return a.m.Close() }

func (a rawAdapter) Run(cmd []byte) ([]byte, error) {
	reply, err := a.m.roundTrip(context.Background(), cmd)
	if err != nil {
		return nil, err
	}
	var r struct {
		Error *Error `json:"error"`
	}
	if json.Unmarshal(reply, &r) == nil && r.Error != nil {
		return nil, r.Error
	}
	return reply, nil
}

func (a rawAdapter) Events(context.Context) (<-chan goqmp.Event, error) {
	return nil, goqmp.ErrEventsNotSupported
}
