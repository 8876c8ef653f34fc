package commands

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/protocol"
)

// fsMount is one local filesystem of the guest, as guest-fsfreeze-* and guest-fstrim see it.
type fsMount struct {
	Dir   string // mount point, as the guest names it (without Env.Root)
	Type  string
	Major uint32
	Minor uint32
}

// The mount tables the reference reads: mountinfo first, /proc/self/mounts when it cannot.
const (
	mountinfoPath = "/proc/self/mountinfo"
	mtabPath      = "/proc/self/mounts"
)

// hostPath turns an absolute guest path into the path the agent opens: tests point Env.Root
// at a temp tree, a real agent has Root "".
func hostPath(env *Env, p string) string {
	if env.Root == "" {
		return p
	}
	return filepath.Join(env.Root, p)
}

// fsMountList lists the local filesystems in mount order, the way qemu-ga builds it
// (build_fs_mount_list): pseudo and network filesystems (device major 0) are skipped, except
// btrfs, whose real device is found by stat'ing the mount source.
//
// Unlike 7.2 (verified on the reference here: it trims a bind mount and its source twice), a
// device that was already listed is skipped, as qemu 10.0 does ("qga: skip bind mounts in fs
// list"): freezing the same filesystem through a second mount point can deadlock the freeze.
// The first mount of a device is the one kept.
func fsMountList(env *Env) ([]fsMount, error) {
	data, err := os.ReadFile(hostPath(env, mountinfoPath))
	if err != nil {
		return fsMountListFromMtab(env)
	}
	var mounts []fsMount
	for _, line := range strings.Split(string(data), "\n") {
		m, ok := parseMountinfoLine(line)
		if !ok {
			continue
		}
		if m.Major == 0 {
			if m.Type != "btrfs" {
				continue
			}
			major, minor, kind := devMajorMinor(env, m.source)
			if kind != devBlock {
				continue
			}
			m.Major, m.Minor = major, minor
		}
		if deviceListed(mounts, m.Major, m.Minor) {
			continue
		}
		mounts = append(mounts, m.fsMount)
	}
	return mounts, nil
}

// fsMountListFromMtab is the reference's fallback for a /proc without mountinfo: getmntent on
// /proc/self/mounts, keeping sources that start with '/', except smbfs, cifs and sources that
// are directories (bind mounts).
func fsMountListFromMtab(env *Env) ([]fsMount, error) {
	data, err := os.ReadFile(hostPath(env, mtabPath))
	if err != nil {
		return nil, protocol.Errorf("failed to open mtab file: '%s'", mtabPath)
	}
	var mounts []fsMount
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 3 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		source, dir, typ := decodeMntent(fields[0]), decodeMntent(fields[1]), decodeMntent(fields[2])
		if !strings.HasPrefix(source, "/") || typ == "smbfs" || typ == "cifs" {
			continue
		}
		major, minor, kind := devMajorMinor(env, source)
		if kind == devDir {
			continue
		}
		// A source that is no block device keeps 0:0, as in the reference; only known devices
		// are deduplicated, since 0:0 says nothing about which filesystem it is.
		if major != 0 && deviceListed(mounts, major, minor) {
			continue
		}
		mounts = append(mounts, fsMount{Dir: dir, Type: typ, Major: major, Minor: minor})
	}
	return mounts, nil
}

func deviceListed(mounts []fsMount, major, minor uint32) bool {
	for _, m := range mounts {
		if m.Major == major && m.Minor == minor {
			return true
		}
	}
	return false
}

// mountinfoEntry is a parsed mountinfo line: the mount and its source.
type mountinfoEntry struct {
	fsMount
	source string
}

// parseMountinfoLine reads "<id> <parent> <major>:<minor> <root> <mount point> <options>
// [optional fields] - <type> <source> <super options>", with the reference's leniency: the
// optional fields may be any number, and a line it cannot read is skipped.
func parseMountinfoLine(line string) (mountinfoEntry, bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 {
		return mountinfoEntry{}, false
	}
	if _, err := strconv.ParseUint(fields[0], 10, 32); err != nil {
		return mountinfoEntry{}, false
	}
	if _, err := strconv.ParseUint(fields[1], 10, 32); err != nil {
		return mountinfoEntry{}, false
	}
	majStr, minStr, ok := strings.Cut(fields[2], ":")
	if !ok {
		return mountinfoEntry{}, false
	}
	major, err1 := strconv.ParseUint(majStr, 10, 32)
	minor, err2 := strconv.ParseUint(minStr, 10, 32)
	if err1 != nil || err2 != nil {
		return mountinfoEntry{}, false
	}
	// The separator is searched after the mount point, so a mount point cannot fake it.
	sep := -1
	for i := 5; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || len(fields) < sep+3 {
		return mountinfoEntry{}, false
	}
	return mountinfoEntry{
		fsMount: fsMount{
			Dir:   decodeMountName(fields[4]),
			Type:  fields[sep+1],
			Major: uint32(major),
			Minor: uint32(minor),
		},
		source: decodeMountName(fields[sep+2]),
	}, true
}

// decodeMountName undoes the kernel's escapes in mountinfo as the reference does
// (decode_mntname): "\\" is a backslash, "\ooo" with a first digit 0-3 is that byte, and any
// other backslash stays as it is.
func decodeMountName(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c != '\\':
			b.WriteByte(c)
		case i+1 < len(s) && s[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case i+3 < len(s) && isOctal(s[i+1], '3') && isOctal(s[i+2], '7') && isOctal(s[i+3], '7'):
			b.WriteByte((s[i+1]-'0')*64 + (s[i+2]-'0')*8 + (s[i+3] - '0'))
			i += 3
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isOctal(c, max byte) bool { return c >= '0' && c <= max }

// decodeMntent undoes the escapes glibc's getmntent decodes: space, tab, newline and
// backslash as octal, and "\\".
func decodeMntent(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`, `\\`, `\`)
	return r.Replace(s)
}

// devKind is what a mount source turned out to be.
type devKind int

const (
	devOther devKind = iota // missing, or neither a block device nor a directory
	devBlock
	devDir // a bind mount's source
)

// devMajorMinor stats a mount source (through Env.Root) like the reference's dev_major_minor.
func devMajorMinor(env *Env, source string) (major, minor uint32, kind devKind) {
	var st unix.Stat_t
	if err := unix.Stat(hostPath(env, source), &st); err != nil {
		return 0, 0, devOther
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return 0, 0, devDir
	case unix.S_IFBLK:
		return unix.Major(st.Rdev), unix.Minor(st.Rdev), devBlock
	}
	return 0, 0, devOther
}

// readLines is bufio.Scanner over a file, for the small kernel tables the commands read.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}
