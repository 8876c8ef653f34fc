// Package transcript records a conversation the harness has with QEMU, the agent or a console
// as timestamped lines, so that a failed spec leaves a readable artifact of what was said.
// harness/qmp, harness/qga and harness/vm share it, so every *.log artifact has one format.
package transcript

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Directions every transcript uses; a package adds its own (qga's discarded bytes, qmp's
// events) as further two-character strings, so the columns stay aligned.
const (
	DirSend = "->" // what the harness sent
	DirRecv = "<-" // what the peer sent back
	DirNote = "--" // something the harness notes (connect, close, timeouts, errors)
)

// maxEntry bounds what one transcript entry keeps, so that a huge reply cannot eat the memory of
// a long run; the length of the original is noted.
const maxEntry = 64 << 10

// Entry is one line of a transcript.
type Entry struct {
	Time time.Time
	Dir  string
	Data string
}

// Transcript is a timestamped, append-only record of a conversation, kept in memory so that it
// can be written out as an artifact even after the connection and its temp dir are gone. The
// zero value keeps data as it is; NewEscaped makes one that escapes bytes outside printable
// ASCII. It is safe for concurrent use.
type Transcript struct {
	mu      sync.Mutex
	entries []Entry
	escape  bool
}

// NewEscaped returns a transcript that writes bytes outside printable ASCII as \xNN, for a
// byte stream that carries garbage on purpose (protocol specs send it, and the agent's sync
// byte is 0xFF): an artifact with raw control bytes in it would be unreadable.
func NewEscaped() *Transcript { return &Transcript{escape: true} }

// Add appends an entry stamped with the current time.
func (t *Transcript) Add(dir string, data []byte) {
	kept := data[:min(len(data), maxEntry)]
	var s string
	if t.escape {
		s = printable(kept)
	} else {
		s = string(kept)
	}
	if len(data) > maxEntry {
		s = fmt.Sprintf("%s... (%d bytes, truncated)", s, len(data))
	}
	t.mu.Lock()
	t.entries = append(t.entries, Entry{Time: time.Now(), Dir: dir, Data: s})
	t.mu.Unlock()
}

// Notef appends a note.
func (t *Transcript) Notef(format string, a ...any) {
	t.Add(DirNote, fmt.Appendf(nil, format, a...))
}

// Entries returns a copy of the entries so far.
func (t *Transcript) Entries() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Entry(nil), t.entries...)
}

// WriteTo writes one line per entry: time, direction, data.
func (t *Transcript) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, e := range t.Entries() {
		fmt.Fprintf(bw, "%s %s %s\n", e.Time.Format("15:04:05.000000"), e.Dir, e.Data)
	}
	err := bw.Flush()
	return cw.n, err
}

// countWriter counts what reaches w, for WriteTo's byte count: bufio hides it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func printable(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
			fmt.Fprintf(&sb, "\\x%02x", c)
			continue
		}
		sb.WriteByte(c)
	}
	return sb.String()
}
