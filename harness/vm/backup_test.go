package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Guestless: QEMU copies and plugs disks without a guest running, so the firmware-only VM of
// the lifecycle tests is enough to check the host side of Backup and HotAddDisk.
func TestBackupCopiesTheDisk(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	want := make([]byte, 4<<20)
	rand.Read(want[:1<<20]) // data, then a hole-like zero tail
	if err := os.WriteFile(src, want, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := Start(ctx, WithLog(&lockedBuffer{}), WithTempRoot(t.TempDir()), WithMemory(128),
		WithDisk(Disk{Path: src, Node: "data"}), WithHotplugPorts(1))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if size, err := v.NodeSize(ctx, "data"); err != nil || size != int64(len(want)) {
		t.Errorf("NodeSize = %d, %v; want %d", size, err, len(want))
	}
	if _, err := v.NodeSize(ctx, "nope"); err == nil {
		t.Error("NodeSize of a missing node succeeded")
	}
	copyPath := filepath.Join(dir, "copy.raw")
	if err := v.Backup(ctx, "data", copyPath); err != nil {
		t.Fatalf("Backup: %v", err)
	}
	if got, err := os.ReadFile(copyPath); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the copy differs from the disk (%d bytes, %v)", len(got), err)
	}
	if err := v.Backup(ctx, "data", copyPath); err == nil {
		t.Error("Backup over an existing file succeeded")
	}
	// The target was detached: the copy can be attached again, here as a hot-plugged disk.
	if err := v.HotAddDisk(ctx, HotplugPort(0), Disk{Path: copyPath, Format: "raw", Node: "copy", Serial: "copy0"}); err != nil {
		t.Fatalf("HotAddDisk: %v", err)
	}
	var serial string
	if err := v.QMP().Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/copy-dev", "property": "serial"}, &serial); err != nil || serial != "copy0" {
		t.Errorf("hot-added device serial = %q, %v", serial, err)
	}
	err = v.HotAddDisk(ctx, "no-such-port", Disk{Path: src, Format: "raw", Node: "again"})
	if err == nil || !strings.Contains(err.Error(), "no-such-port") {
		t.Errorf("hot-add on a missing port = %v", err)
	}
	// A failed device_add must not leave its block node behind.
	if _, err := v.NodeSize(ctx, "again"); err == nil {
		t.Error("the block node of a failed hot-add is still there")
	}
}
