package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Event is one asynchronous QMP event as QEMU sent it, with its position in the log.
type Event struct {
	// Seq is the event's position in the log: 0 for the first event after connecting.
	Seq int
	// Name is the event name, e.g. "SHUTDOWN".
	Name string
	// Data is the event's "data" member (nil when it had none).
	Data map[string]any
	// Time is QEMU's own timestamp of the event.
	Time time.Time
	// Received is when the harness read it.
	Received time.Time
	// Raw is the event exactly as it was on the wire.
	Raw json.RawMessage
}

// Str returns Data[key] when it is a string, else "".
func (e Event) Str(key string) string {
	s, _ := e.Data[key].(string)
	return s
}

// Bool returns Data[key] when it is a boolean, else false.
func (e Event) Bool(key string) bool {
	b, _ := e.Data[key].(bool)
	return b
}

func (e Event) String() string { return fmt.Sprintf("#%d %s", e.Seq, e.Raw) }

// Pos is a position in the event log: the Seq the next event will have.
type Pos int

// recorder is the ordered event log. Waiters block on a channel that is closed and replaced on
// every change, so that they can also select on their context.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	changed chan struct{}
	closed  bool
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) add(raw []byte) {
	var wire struct {
		Event     string         `json:"event"`
		Data      map[string]any `json:"data"`
		Timestamp struct {
			Seconds      int64 `json:"seconds"`
			Microseconds int64 `json:"microseconds"`
		} `json:"timestamp"`
	}
	if err := json.Unmarshal(raw, &wire); err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, Event{
		Seq:      len(r.events),
		Name:     wire.Event,
		Data:     wire.Data,
		Time:     time.Unix(wire.Timestamp.Seconds, wire.Timestamp.Microseconds*1000),
		Received: time.Now(),
		Raw:      append(json.RawMessage(nil), raw...),
	})
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		close(r.changed)
	}
}

func (r *recorder) mark() Pos {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Pos(len(r.events))
}

func (r *recorder) snapshot() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// wait returns the first event at or after from with the given name (any name when empty) for
// which match (when not nil) is true.
func (r *recorder) wait(ctx context.Context, from Pos, name string, match func(Event) bool) (Event, error) {
	next := int(from)
	if next < 0 {
		next = 0
	}
	for {
		r.mu.Lock()
		pending := r.events[min(next, len(r.events)):]
		changed, closed := r.changed, r.closed
		next = max(next, len(r.events))
		r.mu.Unlock()
		for _, e := range pending {
			if (name == "" || e.Name == name) && (match == nil || match(e)) {
				return e, nil
			}
		}
		if closed {
			return Event{}, fmt.Errorf("wait for event %s: %w", name, ErrClosed)
		}
		select {
		case <-ctx.Done():
			return Event{}, fmt.Errorf("wait for event %s: %w", name, context.Cause(ctx))
		case <-changed:
		}
	}
}
