package qmp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
)

// tap pumps lines between QEMU (up) and go-qemu's SocketMonitor (down); see the package doc.
type tap struct {
	up, down net.Conn
	tr       *Transcript
	events   *recorder

	mu      sync.Mutex
	waiters map[string]chan []byte

	closed    chan struct{} // closed when the connection to QEMU has ended
	closeOnce sync.Once
	pumps     sync.WaitGroup
}

func newTap(up, down net.Conn, tr *Transcript, events *recorder) *tap {
	t := &tap{
		up: up, down: down, tr: tr, events: events,
		waiters: map[string]chan []byte{},
		closed:  make(chan struct{}),
	}
	t.pumps.Add(2)
	go t.fromQEMU()
	go t.toQEMU()
	return t
}

// expect registers interest in the reply with the given id. The channel gets exactly one value.
func (t *tap) expect(id string) chan []byte {
	ch := make(chan []byte, 1)
	t.mu.Lock()
	t.waiters[id] = ch
	t.mu.Unlock()
	return ch
}

func (t *tap) forget(id string) {
	t.mu.Lock()
	delete(t.waiters, id)
	t.mu.Unlock()
}

// fromQEMU reads QEMU's lines without a length limit (bufio.Reader, not a Scanner).
func (t *tap) fromQEMU() {
	defer t.pumps.Done()
	defer t.shutdown()
	r := bufio.NewReader(t.up)
	for {
		line, err := r.ReadBytes('\n')
		if trimmed := bytes.TrimRight(line, "\r\n"); len(trimmed) > 0 {
			t.fromQEMULine(trimmed)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				t.tr.Notef("read from QEMU: %v", err)
			}
			return
		}
	}
}

func (t *tap) fromQEMULine(line []byte) {
	var probe struct {
		Event string          `json:"event"`
		ID    json.RawMessage `json:"id"`
	}
	// A line that is not an object still goes to go-qemu, which skips what it cannot parse.
	_ = json.Unmarshal(line, &probe)
	if probe.Event != "" {
		t.tr.Add(DirEvent, line)
		t.events.add(line)
		return
	}
	t.tr.Add(DirRecv, line)
	var id string
	if json.Unmarshal(probe.ID, &id) == nil && id != "" {
		t.mu.Lock()
		ch := t.waiters[id]
		delete(t.waiters, id)
		t.mu.Unlock()
		if ch != nil {
			ch <- append([]byte(nil), line...)
		}
	}
	// Every reply must reach go-qemu: its reader hands it to the Run that waits for it, and a
	// reply it never gets would leave that Run (and the command lock) stuck.
	if _, err := t.down.Write(append(line, '\n')); err != nil {
		t.tr.Notef("forward to go-qemu: %v", err)
	}
}

// toQEMU forwards go-qemu's writes (qmp_capabilities, then the commands the Monitor gives Run).
func (t *tap) toQEMU() {
	defer t.pumps.Done()
	defer t.shutdown()
	r := bufio.NewReader(t.down)
	for {
		line, err := r.ReadBytes('\n')
		if trimmed := bytes.TrimRight(line, "\r\n"); len(trimmed) > 0 {
			t.tr.Add(DirSend, trimmed)
			if _, werr := t.up.Write(line); werr != nil {
				t.tr.Notef("write to QEMU: %v", werr)
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// shutdown ends both connections once either side ends; readers then see EOF.
func (t *tap) shutdown() {
	t.closeOnce.Do(func() {
		t.up.Close()
		t.down.Close()
		t.events.close()
		close(t.closed)
		t.tr.Notef("connection closed")
	})
}
