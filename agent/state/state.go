// Package state is the agent's persistent state directory, compatible with the reference's:
// qga.state holds the next file handle ("[global]" group, key fd_counter, first handle 1000) and
// qga.state.isfrozen exists while filesystems are frozen, so that a restarted agent still
// refuses what a frozen guest must not run.
//
// Differences from qemu-ga 7.2, on purpose:
//   - Open refuses a world-writable state directory (the reference accepts one): any local user
//     could plant qga.state.isfrozen there and lock the agent into the frozen state, or swap
//     qga.state to make handles repeat.
//   - Open does not write qga.state; the first NextHandle does (the reference writes it at start
//     and refuses to start when it cannot). An unwritable directory then costs only
//     guest-file-open, which fails with the reference's text.
//   - An fd_counter that does not parse, or is negative, restarts at 1000 (the reference hands
//     out handle 0 and counts up from there).
//   - The counter advances only when it was persisted (the reference skips a number after a
//     failed write); no handle that was returned is ever handed out again either way.
package state

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// File names inside the state directory, as the reference names them.
const (
	StateFile  = "qga.state"
	FrozenFile = "qga.state.isfrozen"
)

// FirstHandle is the first file handle of a fresh state directory (the reference's
// QGA_PSTATE_DEFAULT_FD_COUNTER).
const FirstHandle int64 = 1000

// PersistError reports that the handle counter could not be written. Its text is the
// reference's reply to guest-file-open in that case; Unwrap gives the cause for logs.
type PersistError struct{ Err error }

func (e *PersistError) Error() string { return "failed to commit persistent state to disk" }

// Unwrap returns the underlying I/O error.
func (e *PersistError) Unwrap() error { return e.Err }

// ErrFrozen is returned by NextHandle while frozen: allocating a handle writes to disk, and a
// write to a frozen filesystem would block the agent until a thaw it could then never serve.
var ErrFrozen = errors.New("cannot allocate a file handle while filesystems are frozen")

// State is the state directory of one agent process. It is safe for concurrent use.
type State struct {
	dir string

	mu     sync.Mutex
	next   int64 // the handle NextHandle returns next; what qga.state records
	frozen bool
}

// Open reads the state directory (which need not exist yet: it is created on first write).
// An existing qga.state.isfrozen makes the state start frozen, as it does the reference's.
func Open(dir string) (*State, error) {
	if dir == "" {
		return nil, errors.New("open state directory: no path given")
	}
	s := &State{dir: dir, next: FirstHandle}
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("open state directory: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("open state directory %s: not a directory", dir)
	case fi.Mode().Perm()&0o002 != 0:
		return nil, fmt.Errorf("open state directory %s: refusing a world-writable directory "+
			"(mode %04o): any user could plant %s in it or replace %s", dir, fi.Mode().Perm(), FrozenFile, StateFile)
	}

	data, err := os.ReadFile(s.path(StateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read state file: %w", err)
	default:
		next, err := parseCounter(data)
		if err != nil {
			return nil, fmt.Errorf("load state file %s: %w", s.path(StateFile), err)
		}
		s.next = next
	}

	switch _, err := os.Lstat(s.path(FrozenFile)); {
	case err == nil:
		s.frozen = true
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("check frozen marker: %w", err)
	}
	return s, nil
}

// Dir is the state directory.
func (s *State) Dir() string { return s.dir }

func (s *State) path(name string) string { return filepath.Join(s.dir, name) }

// NextHandle returns a new file handle and persists the counter before returning it, so that
// handles are never reused, even across restarts. A failed write is a *PersistError.
func (s *State) NextHandle() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.frozen {
		return 0, ErrFrozen
	}
	h := s.next
	if h >= math.MaxInt64-1 {
		return 0, &PersistError{Err: errors.New("file handle counter exhausted")}
	}
	if err := s.writeCounter(h + 1); err != nil {
		return 0, &PersistError{Err: err}
	}
	s.next = h + 1
	return h, nil
}

// writeCounter replaces qga.state atomically: a crash leaves either the old or the new
// counter, never a torn file that would restart the handles at 1000.
func (s *State) writeCounter(next int64) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, StateFile+".*")
	if err != nil {
		return fmt.Errorf("create temporary state file: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := fmt.Fprintf(tmp, "[global]\nfd_counter=%d\n", next); err != nil {
		return fmt.Errorf("write temporary state file: %w", err)
	}
	// 0644 is what the reference's g_file_set_contents gives under the usual umask.
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("chmod temporary state file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync temporary state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close temporary state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path(StateFile)); err != nil {
		return fmt.Errorf("replace state file: %w", err)
	}
	committed = true
	// The rename is durable only once the directory is synced.
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("open state directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	return nil
}

// Frozen reports whether the agent is in the frozen state.
func (s *State) Frozen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.frozen
}

// SetFrozen enters or leaves the frozen state and persists it. The in-memory state changes
// even when the marker file cannot be written or removed (the filesystems are frozen or thawed
// whatever the marker says, and the reference only warns); the error says what went wrong.
func (s *State) SetFrozen(frozen bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.frozen == frozen {
		return nil
	}
	s.frozen = frozen
	if frozen {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return fmt.Errorf("create state directory: %w", err)
		}
		// O_CREAT|O_WRONLY, 0600: the reference's ga_create_file. Written before the
		// filesystems are frozen, so FIFREEZE itself makes it durable.
		f, err := os.OpenFile(s.path(FrozenFile), os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("create frozen marker: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("close frozen marker: %w", err)
		}
		return nil
	}
	if err := os.Remove(s.path(FrozenFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove frozen marker: %w", err)
	}
	return nil
}

// parseCounter reads fd_counter from a GKeyFile document with the rules of GLib's parser that
// matter here: comments and blank lines are skipped, every other line must be a group header
// or a key=value pair inside a group, and the last of duplicate keys wins. A document GLib
// rejects is an error (the reference refuses to start on it); a missing or unusable counter
// value falls back to FirstHandle.
func parseCounter(data []byte) (int64, error) {
	group := ""
	inGroup := false
	value, found := "", false
	for _, line := range bytes.Split(data, []byte("\n")) {
		l := strings.TrimLeft(strings.TrimSuffix(string(line), "\r"), " \t")
		switch {
		case l == "" || l[0] == '#':
		case l[0] == '[':
			end := strings.IndexByte(l, ']')
			if end < 0 || strings.TrimSpace(l[end+1:]) != "" {
				return 0, fmt.Errorf("line %q is not a key-value pair, group, or comment", l)
			}
			group, inGroup = l[1:end], true
		case strings.Contains(l, "="):
			if !inGroup {
				return 0, errors.New("key file does not start with a group")
			}
			k, v, _ := strings.Cut(l, "=")
			if group == "global" && strings.TrimRight(k, " \t") == "fd_counter" {
				value, found = strings.TrimLeft(v, " \t"), true
			}
		default:
			return 0, fmt.Errorf("line %q is not a key-value pair, group, or comment", l)
		}
	}
	if !found {
		return FirstHandle, nil
	}
	// A value that is not a non-negative integer is not an error in the document: the
	// counter starts over, as documented above.
	if n, err := strconv.ParseInt(strings.TrimRight(value, " \t"), 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	return FirstHandle, nil
}
