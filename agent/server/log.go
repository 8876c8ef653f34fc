package server

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Level is a GLib log level, in the reference's names.
type Level int

// The levels the agent logs at. Without -v only Error and Critical are written.
const (
	LevelError Level = iota
	LevelCritical
	LevelWarning
	LevelMessage
	LevelInfo
	LevelDebug
)

func (l Level) String() string {
	return [...]string{"error", "critical", "warning", "message", "info", "debug"}[l]
}

// Logger writes the reference's log lines, "<sec>.<usec>: <level>: <msg>", to a log file
// (opened in append mode) or stderr. Like the reference it writes nothing while the guest is
// frozen, since the log file may sit on a frozen filesystem and the write would hang the agent;
// a log file named while frozen at start-up is opened at the first line after the thaw.
type Logger struct {
	mu      sync.Mutex
	w       io.Writer
	path    string // a log file not opened yet
	verbose bool
	// Enabled reports whether logging is on; nil means always.
	Enabled func() bool
	now     func() time.Time
}

// NewLogger logs to w, or, when path is not empty and w is nil, to path opened at the first
// line. verbose enables every level.
func NewLogger(w io.Writer, path string, verbose bool) *Logger {
	return &Logger{w: w, path: path, verbose: verbose, now: time.Now}
}

// OpenLogFile opens path for appending, as the reference's -l does.
func OpenLogFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
}

// On reports whether a line at level l would be written now.
func (lg *Logger) On(l Level) bool {
	if lg == nil || (!lg.verbose && l > LevelCritical) {
		return false
	}
	return lg.Enabled == nil || lg.Enabled()
}

// Logf writes one line at level l.
func (lg *Logger) Logf(l Level, format string, a ...any) {
	if !lg.On(l) {
		return
	}
	now := lg.now()
	line := fmt.Sprintf("%d.%d: %s: %s\n", now.Unix(), now.Nanosecond()/1000, l, fmt.Sprintf(format, a...))
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if lg.w == nil {
		// The deferred log file; like the reference, fall back to stderr if it won't open.
		lg.w = os.Stderr
		if lg.path != "" {
			if f, err := OpenLogFile(lg.path); err == nil {
				lg.w = f
			}
		}
	}
	_, _ = io.WriteString(lg.w, line)
}

// Debugf logs at debug level.
func (lg *Logger) Debugf(format string, a ...any) { lg.Logf(LevelDebug, format, a...) }

// Warningf logs at warning level.
func (lg *Logger) Warningf(format string, a ...any) { lg.Logf(LevelWarning, format, a...) }

// Criticalf logs at critical level.
func (lg *Logger) Criticalf(format string, a ...any) { lg.Logf(LevelCritical, format, a...) }
