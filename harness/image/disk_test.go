package image

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := lookTool(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// qcowToRaw checks out is a qcow2 of the wanted virtual size and converts it back to raw so
// the host's filesystem tools can read it without a mount.
func qcowToRaw(t *testing.T, out string, size int64) string {
	t.Helper()
	info, err := exec.Command("qemu-img", "info", "--output=json", out).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var meta struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(info, &meta); err != nil {
		t.Fatal(err)
	}
	if meta.Format != "qcow2" || meta.VirtualSize != size {
		t.Errorf("qemu-img info: %+v, want qcow2 of %d bytes", meta, size)
	}
	raw := filepath.Join(t.TempDir(), "raw")
	if o, err := exec.Command("qemu-img", "convert", "-O", "raw", out, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, o)
	}
	return raw
}

func TestCreateExt4Disk(t *testing.T) {
	needTools(t, "mkfs.ext4", "qemu-img", "debugfs", "dumpe2fs")
	out := filepath.Join(t.TempDir(), "data.qcow2")
	spec := DiskSpec{Size: 32 << 20, Label: "qgadata", Files: []DiskFile{
		{Path: "hello.txt", Data: []byte("hello from the host\n")},
		{Path: "/sub/dir/secret", Mode: 0o600, Data: bytes.Repeat([]byte{0xAB}, 70000)},
	}}
	if err := CreateExt4Disk(context.Background(), out, spec); err != nil {
		t.Fatal(err)
	}
	raw := qcowToRaw(t, out, spec.Size)
	debugfs := func(req string) string {
		o, err := exec.Command(mustTool(t, "debugfs"), "-R", req, raw).Output()
		if err != nil {
			t.Fatalf("debugfs %s: %v", req, err)
		}
		return string(o)
	}
	if got := debugfs("cat /hello.txt"); got != "hello from the host\n" {
		t.Errorf("hello.txt = %q", got)
	}
	if got := debugfs("cat /sub/dir/secret"); got != string(spec.Files[1].Data) {
		t.Errorf("secret: %d bytes, want %d", len(got), len(spec.Files[1].Data))
	}
	if st := debugfs("stat /sub/dir/secret"); !strings.Contains(st, "Mode:  0600") || !strings.Contains(st, "User:     0") {
		t.Errorf("secret's inode: %s", st)
	}
	hdr, err := exec.Command(mustTool(t, "dumpe2fs"), "-h", raw).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(hdr), "Filesystem volume name:   qgadata") {
		t.Errorf("label missing from:\n%s", hdr)
	}
}

func TestCreateXFSDisk(t *testing.T) {
	needTools(t, "mkfs.xfs", "qemu-img", "xfs_db")
	out := filepath.Join(t.TempDir(), "xfs.qcow2")
	if err := CreateXFSDisk(context.Background(), out, DiskSpec{Label: "qgaxfs"}); err != nil {
		t.Fatal(err)
	}
	raw := qcowToRaw(t, out, 320<<20)
	o, err := exec.Command(mustTool(t, "xfs_db"), "-r", "-c", "label", raw).CombinedOutput()
	if err != nil || !strings.Contains(string(o), `"qgaxfs"`) {
		t.Errorf("xfs_db label: %q, %v", o, err)
	}
	if err := CreateXFSDisk(context.Background(), out, DiskSpec{Files: []DiskFile{{Path: "x"}}}); err == nil {
		t.Error("files on xfs were accepted")
	}
}

func TestCreateSwapDisk(t *testing.T) {
	needTools(t, "mkswap", "qemu-img")
	out := filepath.Join(t.TempDir(), "swap.qcow2")
	size := int64(64 << 20)
	if err := CreateSwapDisk(context.Background(), out, DiskSpec{Size: size, Label: "qgaswap"}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(qcowToRaw(t, out, size))
	if err != nil {
		t.Fatal(err)
	}
	// The swap header (linux/swap.h): the signature ends the first page, the label sits at
	// 1024 + 28 bytes.
	page := os.Getpagesize()
	if got := string(raw[page-10 : page]); got != "SWAPSPACE2" {
		t.Errorf("swap signature %q", got)
	}
	if got := string(bytes.TrimRight(raw[1052:1068], "\x00")); got != "qgaswap" {
		t.Errorf("swap label %q", got)
	}
}

func mustTool(t *testing.T, name string) string {
	t.Helper()
	p, err := lookTool(name)
	if err != nil {
		t.Skip(err)
	}
	return p
}
