package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hmp runs a human monitor command (qemu-io reaches a disk from the host side, with no guest
// needed) and returns its output.
func hmp(t *testing.T, ctx context.Context, v *VM, cmd string) string {
	t.Helper()
	var out string
	if err := v.QMP().Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd}, &out); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if strings.Contains(out, "Error") {
		t.Fatalf("%s: %s", cmd, out)
	}
	return out
}

// readsPattern reports whether the first 64 KiB of node hold the byte p. QEMU flushes the node
// first (qemu-io prints to QEMU's stdout, not to the monitor), and qemu-io on the host reads the
// node's file through its whole backing chain, sharing QEMU's lock.
func readsPattern(t *testing.T, ctx context.Context, v *VM, node string, p byte) bool {
	t.Helper()
	hmp(t, ctx, v, qemuIO(node, "flush"))
	out, err := exec.CommandContext(ctx, "qemu-io", "-r", "-U", "-f", "qcow2",
		"-c", fmt.Sprintf("read -P 0x%02x 0 64k", p), v.DiskPath(node)).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("Pattern verification failed")) {
		t.Fatalf("qemu-io read on %s: %v: %s", v.DiskPath(node), err, out)
	}
	if !bytes.Contains(out, []byte("read 65536/65536 bytes")) {
		t.Fatalf("qemu-io read on %s: %s", v.DiskPath(node), out)
	}
	return !bytes.Contains(out, []byte("Pattern verification failed"))
}

// qemuIO is the HMP command that runs a qemu-io command on the disk with this node name, through
// its device (a node a device uses cannot be written by another user).
func qemuIO(node, cmd string) string {
	return fmt.Sprintf(`qemu-io -d /machine/peripheral/%s-dev/virtio-backend "%s"`, node, cmd)
}

// Guestless: the firmware idles, which is enough for the machine, disk and migration side of
// snapshots. What the guest's RAM carries is checked with the tiny image (vmtest tag).
func TestTemplateSaveRestore(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base := filepath.Join(t.TempDir(), "base.raw")
	orig := make([]byte, 1<<20)
	rand.Read(orig)
	if err := os.WriteFile(base, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	opts := []Option{WithLog(&log), WithTempRoot(t.TempDir()), WithMemory(128),
		WithDisk(Disk{Path: base, Node: "data"})}
	tdir := filepath.Join(t.TempDir(), "tpl")
	tpl := NewTemplate(tdir, opts...)

	if _, err := tpl.Restore(ctx, KeepSnapshotClock()); err == nil {
		t.Fatal("Restore before Save succeeded")
	}
	var saved *VM
	err := tpl.Save(ctx, func(ctx context.Context, v *VM) error {
		saved = v
		// Written to the template's overlay before the save: every clone must see it.
		hmp(t, ctx, v, qemuIO("data", "write -P 0x5a 0 64k"))
		return nil
	})
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	select {
	case <-saved.Exited():
	default:
		t.Error("the template's QEMU still runs after Save")
	}
	if _, err := os.Stat(saved.Dir()); !os.IsNotExist(err) {
		t.Errorf("the template VM's dir is still there: %v", err)
	}
	for _, f := range []string{"snapshot.json", "state.bin", "data.qcow2"} {
		if _, err := os.Stat(filepath.Join(tdir, f)); err != nil {
			t.Errorf("template dir lacks %s: %v", f, err)
		}
	}
	if tpl.StateBytes() <= 0 {
		t.Errorf("StateBytes = %d", tpl.StateBytes())
	}
	if err := tpl.Save(ctx, nil); err == nil {
		t.Error("a second Save succeeded")
	}
	if err := NewTemplate(tdir, opts...).Save(ctx, nil); err == nil {
		t.Error("Save into a directory holding a snapshot succeeded")
	}

	// Two clones at once, from a Template made anew with the same options (another process's
	// view), so that the manifest is read from disk.
	other := NewTemplate(tdir, opts...)
	a, err := other.Restore(ctx, KeepSnapshotClock(), RestoreName("clone-a"))
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer a.Close()
	b, err := tpl.Restore(ctx, KeepSnapshotClock(), RestoreName("clone-b"))
	if err != nil {
		t.Fatalf("second Restore: %v", err)
	}
	defer b.Close()
	for _, v := range []*VM{a, b} {
		if st, err := v.QMP().Status(ctx); err != nil || st != "running" {
			t.Errorf("%s: status %q, %v after Restore", v.cfg.name, st, err)
		}
		if !readsPattern(t, ctx, v, "data", 0x5a) {
			t.Errorf("%s does not see what the template wrote before the save", v.cfg.name)
		}
		if p := v.DiskPath("data"); !strings.HasPrefix(p, v.Dir()+"/") {
			t.Errorf("%s: disk at %s, not a fresh overlay in its dir", v.cfg.name, p)
		}
		if !strings.Contains(strings.Join(v.CommandLine(), " "), "-incoming defer") {
			t.Errorf("%s: no -incoming on %v", v.cfg.name, v.CommandLine())
		}
	}
	hmp(t, ctx, a, qemuIO("data", "write -P 0xa5 0 64k"))
	if !readsPattern(t, ctx, a, "data", 0xa5) {
		t.Error("clone a does not read its own write")
	}
	if !readsPattern(t, ctx, b, "data", 0x5a) {
		t.Error("clone b sees clone a's write: the clones share a disk")
	}
	if got, err := os.ReadFile(base); err != nil || !bytes.Equal(got, orig) {
		t.Errorf("the base disk changed (%v)", err)
	}
	if !strings.Contains(log.String(), "restored from "+tdir) {
		t.Errorf("no restore line in the log:\n%s", log.String())
	}

	// A template with other options cannot load this state.
	bigger := NewTemplate(tdir, append(append([]Option(nil), opts...), WithMemory(256))...)
	if _, err := bigger.Restore(ctx, KeepSnapshotClock()); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Errorf("Restore with another -m = %v; want a machine mismatch", err)
	}
	// Nor can anyone once a base changed under the overlays.
	if err := os.Chtimes(base, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := tpl.Restore(ctx, KeepSnapshotClock()); err == nil || !strings.Contains(err.Error(), "changed") {
		t.Errorf("Restore after the base changed = %v", err)
	}
}

func TestTemplateSaveRefusesHotplug(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	disk := filepath.Join(t.TempDir(), "d.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	tdir := filepath.Join(t.TempDir(), "tpl")
	tpl := NewTemplate(tdir, WithLog(&lockedBuffer{}), WithTempRoot(t.TempDir()), WithMemory(128), WithHotplugPorts(1))
	err := tpl.Save(ctx, func(ctx context.Context, v *VM) error {
		return v.HotAddDisk(ctx, HotplugPort(0), Disk{Path: disk, Format: "raw", Node: "hot"})
	})
	if err == nil || !strings.Contains(err.Error(), "hot-plugged") {
		t.Fatalf("Save after a hot-plug = %v", err)
	}
	left, _ := os.ReadDir(tdir)
	for _, e := range left {
		if e.Name() != ".lock" {
			t.Errorf("a failed Save left %s", e.Name())
		}
	}
	if Live() != 0 {
		t.Errorf("Live() = %d after a failed Save", Live())
	}
}

// Parallel Ginkgo processes each make the template and call SaveOnce: one boots and saves, the
// others wait and use its snapshot.
func TestTemplateSaveOnce(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log lockedBuffer
	tdir := filepath.Join(t.TempDir(), "tpl")
	opts := []Option{WithLog(&log), WithTempRoot(t.TempDir()), WithMemory(128)}
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- NewTemplate(tdir, opts...).SaveOnce(ctx, nil) }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("SaveOnce: %v", err)
		}
	}
	if n := strings.Count(log.String(), "MB of state to"); n != 1 {
		t.Errorf("%d saves, want 1:\n%s", n, log.String())
	}
	tpl := NewTemplate(tdir, opts...)
	if err := tpl.SaveOnce(ctx, nil); err != nil || tpl.StateBytes() == 0 {
		t.Errorf("SaveOnce on a saved dir = %v, state %d bytes", err, tpl.StateBytes())
	}
	if err := tpl.Save(ctx, nil); err == nil {
		t.Error("Save after SaveOnce succeeded")
	}
	v, err := tpl.Restore(ctx, KeepSnapshotClock())
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
}

func TestMachineArgs(t *testing.T) {
	tpl := []string{"/usr/bin/qemu", "-name", "a", "-pidfile", "/tmp/qgakit-1/qemu.pid", "-m", "512",
		"-blockdev", `{"file":{"filename":"/tmp/qgakit-1/disk0.qcow2"}}`}
	clone := []string{"/usr/bin/qemu", "-name", "b", "-pidfile", "/tmp/qgakit-2/qemu.pid", "-m", "512",
		"-blockdev", `{"file":{"filename":"/tmp/qgakit-2/disk0.qcow2"}}`, "-incoming", "defer"}
	a, b := machineArgs(tpl, "/tmp/qgakit-1"), machineArgs(clone, "/tmp/qgakit-2")
	if strings.Join(a, " ") != strings.Join(b, " ") {
		t.Errorf("same machine, different args:\n%q\n%q", a, b)
	}
	if strings.Contains(strings.Join(a, " "), "qgakit-1") {
		t.Errorf("the VM dir is still in %q", a)
	}
	clone[6] = "256"
	if strings.Join(machineArgs(clone, "/tmp/qgakit-2"), " ") == strings.Join(a, " ") {
		t.Error("a different -m compares equal")
	}
}
