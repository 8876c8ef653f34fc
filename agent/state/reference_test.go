package state

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch/reftest"
)

// TestStateDirectoryIsSharedWithTheReference hands one state directory back and forth between
// this package and qemu-ga 7.2: each continues the other's handle numbering and honours the
// other's frozen marker, so switching agents in a guest never repeats a handle.
func TestStateDirectoryIsSharedWithTheReference(t *testing.T) {
	dir := t.TempDir()
	ours, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := ours.NextHandle(); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := reftest.Start(t, dir)
	for want := int64(1003); want < 1005; want++ {
		r := ref.Execute(t, "guest-file-open", map[string]any{"path": file})
		if r.Err != nil || r.Return != want {
			t.Fatalf("reference after ours: %+v, want handle %d", r, want)
		}
	}
	again, err := Open(dir)
	if err != nil {
		t.Fatalf("reading the reference's qga.state: %v", err)
	}
	if h, err := again.NextHandle(); err != nil || h != 1005 {
		t.Fatalf("ours after the reference: %d, %v; want 1005", h, err)
	}

	if err := again.SetFrozen(true); err != nil {
		t.Fatal(err)
	}
	frozenRef := reftest.Start(t, dir)
	if r := frozenRef.Execute(t, "guest-fsfreeze-status", nil); r.Return != "frozen" {
		t.Fatalf("reference ignored our frozen marker: %+v", r)
	}
}
