package commands

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/state"
)

// sysWriteFile writes a file of a test tree, creating its directories.
func sysWriteFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// sysMkdir creates directories of a test tree.
func sysMkdir(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// sysEnv is an Env on root with a fresh state directory and an empty helper search path.
func sysEnv(t *testing.T, root string) *Env {
	t.Helper()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &Env{State: st, Root: root, Path: t.TempDir()}
}

// sysTmpfsRoot returns a fresh directory on a tmpfs, for tests that issue FIFREEZE or FITRIM
// on mount points of a fake mount table: every path under it is on tmpfs, which cannot be
// frozen, so a mistake in a test can never freeze the machine's own filesystems.
func sysTmpfsRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "qgakit-sys-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skipf("/dev/shm is not a tmpfs here")
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sysLoopExt4 mounts a fresh ext4 image on dir (which must be under a sysTmpfsRoot) and
// returns its device numbers; the cleanup thaws and unmounts it. It needs root and loop
// devices and skips the test without them: it is how FIFREEZE, FITHAW and FITRIM meet a real
// filesystem without touching the machine's own.
func sysLoopExt4(t *testing.T, dir string) (major, minor uint32) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a loop device")
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	imgDir := sysTmpfsRoot(t)
	img := filepath.Join(imgDir, "ext4.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	sysMkdir(t, dir)
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if fd, err := unix.Open(dir, unix.O_RDONLY, 0); err == nil {
			for ioctlNoArg(fd, ioctlFITHAW) == nil {
			}
			unix.Close(fd)
		}
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return unix.Major(st.Dev), unix.Minor(st.Dev)
}

// sysMountinfo writes root/proc/self/mountinfo from lines of "major:minor mountpoint type
// source" (the other columns are filled in as the kernel writes them).
func sysMountinfo(t *testing.T, root string, entries ...string) {
	t.Helper()
	var b strings.Builder
	for i, e := range entries {
		f := strings.Fields(e)
		fmt.Fprintf(&b, "%d 1 %s / %s rw,relatime shared:%d - %s %s rw\n", 20+i, f[0], f[1], i+1, f[2], f[3])
	}
	sysWriteFile(t, filepath.Join(root, "proc/self/mountinfo"), b.String(), 0o644)
}

func TestMountListSkipsPseudoFilesystemsAndDecodesNames(t *testing.T) {
	root := t.TempDir()
	mountinfo := `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 8:17 / /mnt/with\040space rw,relatime shared:4 master:1 - xfs /dev/sdb1 rw
29 27 0:25 / /dev/shm rw - tmpfs tmpfs rw
30 27 8:18 / /back\\slash\134x rw - ext4 /dev/sdb2 rw
31 27 8:19 / /not\9octal\400 rw - ext4 /dev/sdb3 rw
garbage line
32 27 8:20 / /no-separator rw ext4 /dev/sdb4 rw
33 27 8:21 / /truncated rw -
34 27 0:40 / /net rw - nfs4 server:/export rw
`
	sysWriteFile(t, filepath.Join(root, "proc/self/mountinfo"), mountinfo, 0o644)
	got, err := fsMountList(&Env{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	want := []fsMount{
		{Dir: "/", Type: "ext4", Major: 254, Minor: 0},
		{Dir: "/mnt/with space", Type: "xfs", Major: 8, Minor: 17},
		{Dir: `/back\slash\x`, Type: "ext4", Major: 8, Minor: 18},
		{Dir: `/not\9octal\400`, Type: "ext4", Major: 8, Minor: 19},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mount list:\n got %+v\nwant %+v", got, want)
	}
}

// The reference 7.2 on this host lists a bind mount and its source twice (its fstrim
// trimmed both); we keep the first mount of each device, as qemu 10.0 does.
func TestMountListKeepsFirstMountOfADevice(t *testing.T) {
	root := t.TempDir()
	sysMountinfo(t, root,
		"254:0 / ext4 /dev/vda",
		"254:16 /data ext4 /dev/vdb",
		"254:0 /srv/bind ext4 /dev/vda",
		"254:16 /data/again ext4 /dev/vdb",
		"254:17 /other ext4 /dev/vdb1")
	got, err := fsMountList(&Env{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, m := range got {
		dirs = append(dirs, m.Dir)
	}
	if want := []string{"/", "/data", "/other"}; !reflect.DeepEqual(dirs, want) {
		t.Errorf("mount points = %q, want %q", dirs, want)
	}
}

func TestMountListBtrfsTakesDeviceFromSource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a block device node")
	}
	root := t.TempDir()
	sysMkdir(t, filepath.Join(root, "dev"))
	if err := unix.Mknod(filepath.Join(root, "dev/sdc1"), unix.S_IFBLK|0o600, int(unix.Mkdev(8, 33))); err != nil {
		t.Skipf("mknod: %v", err)
	}
	sysMkdir(t, filepath.Join(root, "srv/sub"))
	sysMountinfo(t, root,
		"0:45 /btr btrfs /dev/sdc1",
		"0:46 /btr-missing btrfs /dev/nonexistent",
		"0:47 /btr-bind btrfs /srv/sub",
		"0:48 /notbtrfs ext4 /dev/sdc1")
	got, err := fsMountList(&Env{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	want := []fsMount{{Dir: "/btr", Type: "btrfs", Major: 8, Minor: 33}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mount list = %+v, want %+v", got, want)
	}
}

func TestMountListFallsBackToMounts(t *testing.T) {
	root := t.TempDir()
	sysMkdir(t, filepath.Join(root, "srv/dir"))
	sysWriteFile(t, filepath.Join(root, "images/disk.img"), "", 0o644)
	mounts := `proc /proc proc rw 0 0
/dev/missing / ext4 rw 0 0
//server/share /smb cifs rw 0 0
/server/share /smb2 smbfs rw 0 0
/srv/dir /bind none rw,bind 0 0
/images/disk.img /mnt/with\040space ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
`
	sysWriteFile(t, filepath.Join(root, "proc/self/mounts"), mounts, 0o644)
	got, err := fsMountList(&Env{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	// Sources that are no block device keep 0:0 and are all kept, as in the reference.
	want := []fsMount{
		{Dir: "/", Type: "ext4"},
		{Dir: "/mnt/with space", Type: "ext4"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mount list = %+v, want %+v", got, want)
	}
}

func TestMountListWithoutMountTables(t *testing.T) {
	_, err := fsMountList(&Env{Root: t.TempDir()})
	if err == nil || err.Error() != "GenericError: failed to open mtab file: '/proc/self/mounts'" {
		t.Errorf("error = %v", err)
	}
}
