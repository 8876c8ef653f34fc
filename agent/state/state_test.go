package state

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func readState(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHandlesStartAt1000AndPersistTheReferenceBytes(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for want := int64(1000); want < 1003; want++ {
		h, err := s.NextHandle()
		if err != nil || h != want {
			t.Fatalf("NextHandle = %d, %v; want %d", h, err, want)
		}
		// The counter on disk is the next handle, written before the handle is returned:
		// exactly what qemu-ga 7.2 leaves in its -t directory.
		if got, exp := readState(t, dir), "[global]\nfd_counter="+itoa(want+1)+"\n"; got != exp {
			t.Fatalf("qga.state = %q, want %q", got, exp)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("qga.state mode %04o, want 0644", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %v, want only %s (no temporary files left)", names(entries), StateFile)
	}
}

func TestHandlesIncreaseAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	s1, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	last := int64(0)
	for i := 0; i < 3; i++ {
		if last, err = s1.NextHandle(); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	h, err := s2.NextHandle()
	if err != nil || h != last+1 {
		t.Fatalf("after restart NextHandle = %d, %v; want %d", h, err, last+1)
	}
}

func TestReadsStateWrittenByTheReference(t *testing.T) {
	cases := map[string]int64{
		"[global]\nfd_counter=1002\n":                      1002,
		"# comment\n\n[global]\n  fd_counter = 4711  \n":   4711,
		"[other]\nfd_counter=5\n[global]\nfd_counter=77\n": 77,
		"[global]\nfd_counter=1\nfd_counter=9\n":           9, // the last duplicate wins, as in GKeyFile
		"[global]\n":                                       1000,
		"[other]\nfd_counter=5\n":                          1000,
		"[global]\nfd_counter=abc\n":                       1000, // the reference would restart at 0
		"[global]\nfd_counter=-5\n":                        1000,
		"":                                                 1000,
	}
	for doc, want := range cases {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		if h, err := s.NextHandle(); err != nil || h != want {
			t.Errorf("%q: NextHandle = %d, %v; want %d", doc, h, err, want)
		}
	}
}

func TestRejectsWhatGKeyFileRejects(t *testing.T) {
	for _, doc := range []string{"garbage\n", "fd_counter=5\n", "[global\nfd_counter=5\n", "[global] x\n"} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir); err == nil {
			t.Errorf("%q: Open succeeded; the reference refuses to start on this file", doc)
		}
	}
}

func TestMissingDirectoryIsCreatedOnFirstWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("Open created the directory; it must wait for the first write")
	}
	if h, err := s.NextHandle(); err != nil || h != 1000 {
		t.Fatalf("NextHandle = %d, %v", h, err)
	}
	if got := readState(t, dir); got != "[global]\nfd_counter=1001\n" {
		t.Fatalf("qga.state = %q", got)
	}
}

func TestRefusesWorldWritableDirectory(t *testing.T) {
	for _, mode := range []os.FileMode{0o777, 0o1777, 0o703} {
		dir := filepath.Join(t.TempDir(), "st")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir)
		if err == nil || !strings.Contains(err.Error(), "world-writable") {
			t.Errorf("mode %04o: Open error = %v, want a world-writable refusal", mode, err)
		}
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o775); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Errorf("group-writable directory refused: %v", err)
	}
}

func TestStatePathThatIsAFileIsRefused(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f); err == nil {
		t.Fatal("Open of a regular file succeeded")
	}
}

func TestFailedPersistIsTheReferenceErrorAndConsumesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A non-empty directory where qga.state belongs makes the rename fail, even for root.
	blocker := filepath.Join(dir, StateFile)
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err = s.NextHandle()
	var pe *PersistError
	if !errors.As(err, &pe) || err.Error() != "failed to commit persistent state to disk" || pe.Unwrap() == nil {
		t.Fatalf("NextHandle error = %v, want PersistError with the reference text and a cause", err)
	}
	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	if h, err := s.NextHandle(); err != nil || h != 1000 {
		t.Fatalf("after a failed persist NextHandle = %d, %v; want 1000 (nothing was handed out)", h, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %v after a failed persist, want no temporary files", names(entries))
	}
}

func TestFrozenMarker(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Frozen() {
		t.Fatal("fresh state is frozen")
	}
	if err := s.SetFrozen(true); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, FrozenFile)
	fi, err := os.Stat(marker)
	if err != nil {
		t.Fatalf("marker not created: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("marker mode %04o, want 0600", fi.Mode().Perm())
	}
	if !s.Frozen() {
		t.Fatal("SetFrozen(true) did not freeze")
	}
	if _, err := s.NextHandle(); !errors.Is(err, ErrFrozen) {
		t.Fatalf("NextHandle while frozen: %v, want ErrFrozen", err)
	}

	// A restarted agent notices the marker and starts frozen.
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !s2.Frozen() {
		t.Fatal("Open ignored an existing qga.state.isfrozen")
	}
	if err := s2.SetFrozen(false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("marker still there after thaw: %v", err)
	}
	if s2.Frozen() {
		t.Fatal("still frozen after SetFrozen(false)")
	}
	if err := s2.SetFrozen(false); err != nil {
		t.Fatalf("thawing twice: %v", err)
	}
	if h, err := s2.NextHandle(); err != nil || h != 1000 {
		t.Fatalf("NextHandle after thaw = %d, %v", h, err)
	}
}

func TestFrozenMarkerInAMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetFrozen(true); err != nil {
		t.Fatalf("SetFrozen(true) before the directory exists: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, FrozenFile)); err != nil {
		t.Fatalf("marker not created: %v", err)
	}
}

func TestFrozenStateChangesEvenWhenTheMarkerCannotBeWritten(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A non-empty directory named like the marker: creating it fails, removing it too.
	if err := os.MkdirAll(filepath.Join(dir, FrozenFile, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFrozen(true); err == nil {
		t.Fatal("SetFrozen(true) reported no error")
	}
	if !s.Frozen() {
		t.Fatal("a failed marker write left the agent thawed while filesystems are frozen")
	}
	if err := s.SetFrozen(false); err == nil {
		t.Fatal("SetFrozen(false) reported no error")
	}
	if s.Frozen() {
		t.Fatal("a failed marker removal left the agent frozen")
	}
}

func TestConcurrentHandlesAreUnique(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 16, 25
	var mu sync.Mutex
	var got []int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				h, err := s.NextHandle()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, h)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	for i, h := range got {
		if h != 1000+int64(i) {
			t.Fatalf("handles %v are not 1000..%d without gaps or repeats", got, 1000+workers*each-1)
		}
	}
	if want := "[global]\nfd_counter=" + itoa(1000+workers*each) + "\n"; readState(t, dir) != want {
		t.Fatalf("qga.state = %q, want %q", readState(t, dir), want)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
