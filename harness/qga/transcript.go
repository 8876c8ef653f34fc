package qga

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Directions of transcript entries.
const (
	DirSend    = "->" // bytes the harness sent
	DirRecv    = "<-" // a reply line from the agent (a leading 0xFF shows as \xff)
	DirDiscard = "xx" // bytes skipped while looking for a sync delimiter
	DirNote    = "--" // something the harness notes (connect, timeouts, resync)
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
// can be written out as an artifact even after the connection and its temp dir are gone.
type Transcript struct {
	mu      sync.Mutex
	entries []Entry
}

// Add appends an entry stamped with the current time. Bytes outside printable ASCII are
// written as \xNN: protocol specs send garbage, and the sync byte is 0xFF.
func (t *Transcript) Add(dir string, data []byte) {
	s := printable(data[:min(len(data), maxEntry)])
	if len(data) > maxEntry {
		s = fmt.Sprintf("%s... (%d bytes, truncated)", s, len(data))
	}
	t.mu.Lock()
	t.entries = append(t.entries, Entry{Time: time.Now(), Dir: dir, Data: s})
	t.mu.Unlock()
}

// Notef appends a note.
func (t *Transcript) Notef(format string, a ...any) {
	t.Add(DirNote, []byte(fmt.Sprintf(format, a...)))
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
