package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// maxSerialKept bounds the ttyS0 log kept in memory; older output is dropped (positions stay
// absolute) but serial0.log in the VM's dir keeps everything while the VM exists.
const maxSerialKept = 32 << 20

// serialLog is the captured ttyS0: a growing log with absolute byte positions, waitable.
type serialLog struct {
	mu      sync.Mutex
	base    int64 // absolute position of buf[0]
	buf     []byte
	changed chan struct{}
	closed  bool

	file   *os.File  // live copy, may be nil
	log    io.Writer // timestamped lines, may be nil
	prefix string
	line   []byte // partial line for log
}

func newSerialLog(file *os.File, log io.Writer, prefix string) *serialLog {
	return &serialLog{changed: make(chan struct{}), file: file, log: log, prefix: prefix}
}

// run copies r into the log until r ends.
func (s *serialLog) run(r io.Reader) {
	defer s.close()
	b := make([]byte, 32<<10)
	for {
		n, err := r.Read(b)
		if n > 0 {
			s.write(b[:n])
		}
		if err != nil {
			return
		}
	}
}

func (s *serialLog) write(p []byte) {
	if s.file != nil {
		_, _ = s.file.Write(p)
	}
	if s.log != nil {
		s.line = append(s.line, p...)
		for {
			i := bytes.IndexByte(s.line, '\n')
			if i < 0 {
				break
			}
			fmt.Fprintf(s.log, "%s %s %s\n", time.Now().Format("15:04:05.000"), s.prefix, bytes.TrimRight(s.line[:i], "\r"))
			s.line = s.line[i+1:]
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	if over := len(s.buf) - maxSerialKept; over > 0 {
		s.buf = append(s.buf[:0], s.buf[over:]...)
		s.base += int64(over)
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *serialLog) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.changed)
	}
	if s.file != nil {
		s.file.Close()
	}
}

func (s *serialLog) mark() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.base + int64(len(s.buf))
}

func (s *serialLog) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.buf...)
}

// wait returns the position just past the first occurrence of substr at or after from.
func (s *serialLog) wait(ctx context.Context, from int64, substr string) (int64, error) {
	for {
		s.mu.Lock()
		start := max(from-s.base, 0)
		var i int = -1
		if start <= int64(len(s.buf)) {
			i = bytes.Index(s.buf[start:], []byte(substr))
		}
		if i >= 0 {
			end := s.base + start + int64(i+len(substr))
			s.mu.Unlock()
			return end, nil
		}
		changed, closed := s.changed, s.closed
		s.mu.Unlock()
		if closed {
			return 0, fmt.Errorf("wait for %q on the serial log: the serial line closed (QEMU exited)", substr)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for %q on the serial log: %w", substr, context.Cause(ctx))
		case <-changed:
		}
	}
}
