// Package state is the agent's persistent state directory, compatible with the reference's:
// qga.state holds the next file handle ("[global]" group, key fd_counter, first handle 1000) and
// qga.state.isfrozen exists while filesystems are frozen, so that a restarted agent still
// refuses what a frozen guest must not run.
package state

// State is the state directory of one agent process. It is safe for concurrent use.
type State struct{ dir string }

// Open reads the state directory (which need not exist yet: it is created on first write).
func Open(dir string) (*State, error) { return &State{dir: dir}, nil }

// Dir is the state directory.
func (s *State) Dir() string { return s.dir }

// NextHandle returns a new file handle and persists the counter before returning it, so that
// handles are never reused, even across restarts.
func (s *State) NextHandle() (int64, error) { panic("state: NextHandle not written yet") }

// Frozen reports whether the agent is in the frozen state.
func (s *State) Frozen() bool { return false }

// SetFrozen enters or leaves the frozen state and persists it.
func (s *State) SetFrozen(frozen bool) error { panic("state: SetFrozen not written yet") }
