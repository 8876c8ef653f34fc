package commands

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch"
)

// Entries come in reverse mount order (the reference prepends), and a failure is an entry's
// error, never the command's.
func TestFstrimReportsEachMountInReverseOrder(t *testing.T) {
	root := sysTmpfsRoot(t)
	sysMkdir(t, filepath.Join(root, "mnt/tmpfs"))
	sysMountinfo(t, root,
		"8:1 /mnt/tmpfs ext4 /dev/sda1",
		"0:50 /proc proc proc",
		"8:2 /mnt/gone ext4 /dev/sda2")
	got, err := guestFstrim(sysEnv(t, root), dispatch.Args{})
	if err != nil {
		t.Fatal(err)
	}
	// tmpfs has no FITRIM: ENOTTY, whoever asks.
	want := `{"paths":[{"path":"/mnt/gone","error":"failed to open: No such file or directory"},{"path":"/mnt/tmpfs","error":"trim not supported"}]}`
	if b, _ := json.Marshal(got); string(b) != want {
		t.Errorf("fstrim = %s\n want %s", b, want)
	}
}

func TestFstrimNoMountsIsAnEmptyList(t *testing.T) {
	root := t.TempDir()
	sysMountinfo(t, root, "0:21 /proc proc proc")
	got, err := guestFstrim(sysEnv(t, root), dispatch.Args{})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(got); string(b) != `{"paths":[]}` {
		t.Errorf("fstrim = %s, want an empty list", b)
	}
}

func TestFstrimWithoutMountTableFails(t *testing.T) {
	_, err := guestFstrim(sysEnv(t, t.TempDir()), dispatch.Args{})
	sysWantError(t, err, "failed to open mtab file: '/proc/self/mounts'")
}

func TestFstrimARealFilesystem(t *testing.T) {
	root := sysTmpfsRoot(t)
	major, minor := sysLoopExt4(t, filepath.Join(root, "mnt/ext"))
	sysMountinfo(t, root, itoa(major)+":"+itoa(minor)+" /mnt/ext ext4 /dev/loop")
	env := sysEnv(t, root)
	for _, minimum := range []int64{0, 1 << 20} {
		got, err := guestFstrim(env, dispatch.Args{"minimum": minimum})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Paths) != 1 {
			t.Fatalf("fstrim = %+v", got)
		}
		r := got.Paths[0]
		if r.Path != "/mnt/ext" || r.Error != nil || r.Trimmed == nil || r.Minimum == nil {
			t.Fatalf("minimum %d: fstrim = %+v", minimum, sysJSON(t, r))
		}
		// The kernel reports the minimum it used: at least the one asked for (it rounds up
		// to the device's discard granularity).
		if *r.Minimum < minimum || *r.Trimmed < 0 {
			t.Errorf("minimum %d: trimmed %d, minimum %d", minimum, *r.Trimmed, *r.Minimum)
		}
		keys := sysJSON(t, r).(map[string]any)
		delete(keys, "trimmed")
		delete(keys, "minimum")
		if !reflect.DeepEqual(keys, map[string]any{"path": "/mnt/ext"}) {
			t.Errorf("a successful entry carries %v", keys)
		}
	}
	// A trim of a fresh filesystem discards its free space, so a first trim cannot be 0.
	// (Run on a new image: the loop above already trimmed this one.)
	root2 := sysTmpfsRoot(t)
	major, minor = sysLoopExt4(t, filepath.Join(root2, "mnt/ext"))
	sysMountinfo(t, root2, itoa(major)+":"+itoa(minor)+" /mnt/ext ext4 /dev/loop")
	got, err := guestFstrim(sysEnv(t, root2), dispatch.Args{})
	if err != nil {
		t.Fatal(err)
	}
	if r := got.Paths[0]; r.Error == nil && (r.Trimmed == nil || *r.Trimmed == 0) {
		t.Errorf("first trim of a fresh ext4 trimmed nothing: %v", sysJSON(t, r))
	}
}
