package image

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// CpioWriter writes a cpio archive in the "newc" format (magic 070701), the only one the
// Linux initramfs unpacker reads. Entries are owned by root with mtime 0, so an archive
// depends only on its contents. Parent directories that were not written explicitly are added
// (mode 0755) before their first child, because the kernel does not create them.
type CpioWriter struct {
	w      *bufio.Writer
	n      int64 // bytes written so far, for the 4-byte alignment
	ino    uint32
	dirs   map[string]bool
	closed bool
}

// NewCpioWriter returns a writer that appends an archive to w. The caller must Close it to
// write the trailer, and w must be at a 4-byte aligned offset of the initramfs when the
// archive follows another one.
func NewCpioWriter(w io.Writer) *CpioWriter {
	return &CpioWriter{w: bufio.NewWriterSize(w, 1<<16), ino: 1, dirs: map[string]bool{".": true, "": true}}
}

// cpio mode bits (from the format, not from the host's os.FileMode).
const (
	cpioDir     = 0o040000
	cpioRegular = 0o100000
	cpioSymlink = 0o120000
	cpioCharDev = 0o020000
)

// cleanName turns "/a/b" or "./a/b" into "a/b", the form the kernel and GNU cpio both take.
func cleanName(name string) (string, error) {
	n := path.Clean("/" + name)
	if n == "/" {
		return "", fmt.Errorf("cpio entry %q: not a file name", name)
	}
	return strings.TrimPrefix(n, "/"), nil
}

// Dir adds a directory.
func (c *CpioWriter) Dir(name string, perm fs.FileMode) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	c.dirs[n] = true
	return c.entry(n, cpioDir|permBits(perm), 2, [2]uint32{}, nil, 0)
}

// File adds a regular file with the given contents.
func (c *CpioWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.FileFrom(name, perm, int64(len(data)), strings.NewReader(string(data)))
}

// FileFrom adds a regular file of size bytes read from r, for files too big to hold twice.
func (c *CpioWriter) FileFrom(name string, perm fs.FileMode, size int64, r io.Reader) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	return c.entry(n, cpioRegular|permBits(perm), 1, [2]uint32{}, r, size)
}

// Symlink adds a symbolic link name -> target.
func (c *CpioWriter) Symlink(name, target string) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	return c.entry(n, cpioSymlink|0o777, 1, [2]uint32{}, strings.NewReader(target), int64(len(target)))
}

// CharDev adds a character device node, for the few nodes that must exist before devtmpfs is
// mounted (dev/console, where the kernel points /init's standard streams).
func (c *CpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	return c.entry(n, cpioCharDev|permBits(perm), 1, [2]uint32{major, minor}, nil, 0)
}

// Close writes the trailer and flushes; it does not close the underlying writer.
func (c *CpioWriter) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if err := c.entry("TRAILER!!!", 0, 1, [2]uint32{}, nil, 0); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("cpio: flush: %w", err)
	}
	return nil
}

// permBits maps Go's permission and special bits to the Unix ones cpio stores.
func permBits(m fs.FileMode) uint32 {
	b := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

func (c *CpioWriter) parents(name string) error {
	dir := path.Dir(name)
	if c.dirs[dir] {
		return nil
	}
	if err := c.parents(dir); err != nil {
		return err
	}
	c.dirs[dir] = true
	return c.entry(dir, cpioDir|0o755, 2, [2]uint32{}, nil, 0)
}

func (c *CpioWriter) entry(name string, mode, nlink uint32, rdev [2]uint32, body io.Reader, size int64) error {
	if c.closed && name != "TRAILER!!!" {
		return fmt.Errorf("cpio entry %q: archive already closed", name)
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio entry %q: size %d does not fit the newc format", name, size)
	}
	ino := c.ino
	if name == "TRAILER!!!" {
		ino = 0
	}
	c.ino++
	// newc header: magic and 13 eight-digit hex fields; namesize counts the NUL.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name)+1, 0)
	if err := c.write([]byte(hdr + name + "\x00")); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if body != nil {
		m, err := io.CopyN(c.w, body, size)
		c.n += m
		if err != nil {
			return fmt.Errorf("cpio entry %q: write body: %w", name, err)
		}
	}
	return c.pad()
}

func (c *CpioWriter) write(b []byte) error {
	m, err := c.w.Write(b)
	c.n += int64(m)
	if err != nil {
		return fmt.Errorf("cpio: write: %w", err)
	}
	return nil
}

func (c *CpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}
