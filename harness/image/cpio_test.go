package image

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The exact bytes of a one-file archive, written out by hand from the newc format: a writer
// that gets a field, the name padding or the data padding wrong fails here.
func TestCpioExactBytes(t *testing.T) {
	var buf bytes.Buffer
	cw := NewCpioWriter(&buf)
	if err := cw.File("/a", 0o644, []byte("xy")); err != nil {
		t.Fatal(err)
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	hdr := func(ino, mode, nlink, size, namesize string) string {
		//        magic   ino  mode  uid        gid        nlink mtime      filesize
		return "070701" + ino + mode + "00000000" + "00000000" + nlink + "00000000" + size +
			// devmajor  devminor    rdevmajor   rdevminor   namesize    check
			"00000000" + "00000000" + "00000000" + "00000000" + namesize + "00000000"
	}
	want := hdr("00000001", "000081A4", "00000001", "00000002", "00000002") + "a\x00" + // 112 bytes
		"xy\x00\x00" + // data padded to 116
		hdr("00000000", "00000000", "00000001", "00000000", "0000000B") + "TRAILER!!!\x00" + // 237
		"\x00\x00\x00" // 240
	if got := buf.String(); got != want {
		t.Fatalf("archive bytes differ\n got %q\nwant %q", got, want)
	}
}

// GNU cpio is an independent reader: what it extracts must be what was written.
func TestCpioExtractsWithGNUCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed")
	}
	var buf bytes.Buffer
	cw := NewCpioWriter(&buf)
	big := bytes.Repeat([]byte{0, 1, 2, 0xff, 7}, 40001) // binary, size not a multiple of 4
	steps := []error{
		cw.Dir("etc", 0o755),
		cw.File("etc/passwd", 0o600, []byte("root:x:0:0::/root:/bin/sh\n")),
		cw.File("deep/er/still/bin", 0o755, big), // parents are implied
		cw.Symlink("bin/sh", "/bin/busybox"),
		cw.Dir("tmp", 0o777|fs.ModeSticky),
		cw.File("empty", 0o644, nil),
		cw.CharDev("dev/console", 0o600, 5, 1),
		cw.Close(),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}

	list := exec.Command(cpio, "-tv", "--quiet")
	list.Stdin = bytes.NewReader(buf.Bytes())
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -tv: %v\n%s", err, out)
	}
	listing := string(out)
	for _, want := range []string{"drwxrwxrwt", "crw-------", "5,   1", "deep/er/still", "bin/sh -> /bin/busybox"} {
		if !strings.Contains(listing, want) {
			t.Errorf("listing lacks %q:\n%s", want, listing)
		}
	}

	dir := t.TempDir()
	ext := exec.Command(cpio, "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console")
	ext.Dir = dir
	ext.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := ext.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "deep/er/still/bin"))
	if err != nil || !bytes.Equal(got, big) {
		t.Errorf("deep/er/still/bin: %d bytes, err %v; want the %d bytes written", len(got), err, len(big))
	}
	if st, err := os.Stat(filepath.Join(dir, "deep/er/still/bin")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("deep/er/still/bin mode: %v, %v", st, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "etc/passwd")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("etc/passwd mode: %v, %v", st, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "/bin/busybox" {
		t.Errorf("bin/sh link: %q, %v", target, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "empty")); err != nil || st.Size() != 0 {
		t.Errorf("empty: %v, %v", st, err)
	}
}

func TestCpioRefusesBadUse(t *testing.T) {
	var buf bytes.Buffer
	cw := NewCpioWriter(&buf)
	if err := cw.File("/", 0o644, nil); err == nil {
		t.Error("a file named / was accepted")
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cw.File("late", 0o644, nil); err == nil {
		t.Error("an entry after Close was accepted")
	}
}

// Every entry of a written archive starts 4-byte aligned, whatever the sizes of the names and
// bodies before it: the kernel unpacker requires it.
func TestCpioAlignment(t *testing.T) {
	var buf bytes.Buffer
	cw := NewCpioWriter(&buf)
	for i, name := range []string{"a", "bb", "ccc", "dddd", "eeeee/f"} {
		if err := cw.File(name, 0o644, bytes.Repeat([]byte{'x'}, i*3+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if len(b)%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", len(b))
	}
	n := 0
	for off := 0; off+6 <= len(b); off++ {
		if string(b[off:off+6]) == "070701" {
			n++
			if off%4 != 0 {
				t.Errorf("entry at offset %d is not aligned", off)
			}
		}
	}
	if n != 7 { // 5 files, the implied directory eeeee and the trailer
		t.Errorf("found %d headers, want 7", n)
	}
}
