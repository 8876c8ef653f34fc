package commands

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
	"github.com/qgakit/qgakit/agent/protocol"
)

// The guest-file-* commands give the host file handles in the guest (qga/commands-posix.c
// and qga/commands.c of QEMU 7.2). Replies, error texts and the eof and position values are the
// reference's; the reference drives a stdio FILE, this works on the file descriptor directly:
//
//   - Writes are not buffered in the agent: when guest-file-write returns, the bytes are in the
//     kernel, so a killed agent loses nothing it acknowledged, a full disk fails the write that
//     filled it (not a later flush), and other readers of the file see the data at once.
//     guest-file-flush has nothing left to push and only checks the handle.
//   - Reads do not read ahead, so the descriptor's offset is always the position the host
//     sees. A read that gets some bytes and then EAGAIN (a pipe that was drained) returns those
//     bytes with eof false; the reference drops them and answers EAGAIN.
//   - A guest-file-close whose close(2) fails still releases the handle (Linux frees the
//     descriptor in any case); the reference keeps a handle to a closed stream.
//
// What the stdio layer made visible is kept: eof is true only when this very call met the end
// of the file, switching from reading to writing on a pipe fails with ESPIPE as the
// reference's fseek(SEEK_CUR) does, and a write that returns count < requested only happens on
// a full non-blocking pipe.

// maxReadCount is GUEST_FILE_READ_COUNT_MAX (48 MiB): with base64's 4/3 the reply stays under
// the 64 MiB the host's JSON parser accepts.
const maxReadCount = 48 << 20

// defaultReadCount is QGA_READ_COUNT_DEFAULT.
const defaultReadCount = 4096

// newFileMode is DEFAULT_NEW_FILE_MODE, applied with fchmod so the umask does not matter.
const newFileMode = 0o666

// openModes maps the fopen() mode strings the reference accepts (guest_file_open_modes) to
// open(2) flags. O_BINARY is 0 on Linux, so the b forms equal the plain ones.
var openModes = map[string]int{
	"r": unix.O_RDONLY, "rb": unix.O_RDONLY,
	"w": unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC, "wb": unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC,
	"a": unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND, "ab": unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND,
	"r+": unix.O_RDWR, "rb+": unix.O_RDWR, "r+b": unix.O_RDWR,
	"w+": unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC, "wb+": unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC,
	"w+b": unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC,
	"a+":  unix.O_RDWR | unix.O_CREAT | unix.O_APPEND, "ab+": unix.O_RDWR | unix.O_CREAT | unix.O_APPEND,
	"a+b": unix.O_RDWR | unix.O_CREAT | unix.O_APPEND,
}

// rwState is the reference's RwState: what the last successful operation on a handle was.
type rwState int

const (
	rwNew rwState = iota
	rwReading
	rwWriting
)

// guestFile is one open handle. mu serialises operations on it, so that a read's offset and
// eof belong to that read alone.
type guestFile struct {
	mu     sync.Mutex
	fd     int
	closed bool
	state  rwState
}

// fileTable holds the open handles of one agent.
type fileTable struct {
	env *Env

	mu    sync.Mutex
	files map[int64]*guestFile
}

// The replies of the schema's GuestFileRead, GuestFileWrite and GuestFileSeek.
type fileRead struct {
	Count  int64           `json:"count"`
	BufB64 protocol.Base64 `json:"buf-b64"`
	EOF    bool            `json:"eof"`
	mem    *readBuffer     // what BufB64 lies in, for a large read
}

// Release gives a large read's buffer back to the kernel once its reply is written (the
// server calls it: fileRead is a protocol.Releaser); BufB64 is unusable after.
func (r fileRead) Release() { r.mem.Release() }

type fileWrite struct {
	Count int64 `json:"count"`
	EOF   bool  `json:"eof"`
}

type fileSeek struct {
	Position int64 `json:"position"`
	EOF      bool  `json:"eof"`
}

func init() {
	groups = append(groups, registerFile)
}

func registerFile(d *dispatch.Dispatcher, env *Env) {
	ft := &fileTable{env: env, files: map[int64]*guestFile{}}
	d.Register("guest-file-open", func(_ context.Context, a dispatch.Args) (any, error) {
		path, _ := a.String("path")
		mode, ok := a.String("mode")
		if !ok {
			mode = "r"
		}
		return ft.open(path, mode)
	})
	d.Register("guest-file-close", func(_ context.Context, a dispatch.Args) (any, error) {
		h, _ := a.Int("handle")
		return nil, ft.close(h)
	})
	d.Register("guest-file-read", func(_ context.Context, a dispatch.Args) (any, error) {
		h, _ := a.Int("handle")
		count, hasCount := a.Int("count")
		return ft.read(h, count, hasCount)
	})
	d.Register("guest-file-write", func(_ context.Context, a dispatch.Args) (any, error) {
		h, _ := a.Int("handle")
		b64, _ := a.String("buf-b64")
		count, hasCount := a.Int("count")
		return ft.write(h, b64, count, hasCount)
	})
	d.Register("guest-file-seek", func(_ context.Context, a dispatch.Args) (any, error) {
		h, _ := a.Int("handle")
		offset, _ := a.Int("offset")
		return ft.seek(h, offset, a["whence"])
	})
	d.Register("guest-file-flush", func(_ context.Context, a dispatch.Args) (any, error) {
		h, _ := a.Int("handle")
		return nil, ft.flush(h)
	})
}

func strerror(err error) string { return errtext.Strerror(err) }

// open is guest-file-open. The handle is taken from the state only after the file is open, so a
// failed open consumes no handle; the file stays created if the handle cannot be persisted, as
// with the reference.
func (ft *fileTable) open(path, mode string) (int64, error) {
	flags, ok := openModes[mode]
	if !ok {
		return 0, protocol.Errorf("invalid file open mode '%s'", mode)
	}
	// The reference's JSON parser turns U+0000 into modified UTF-8, so a path never holds a NUL.
	cpath := strings.ReplaceAll(path, "\x00", "\xc0\x80")
	// O_NONBLOCK keeps a FIFO or a device from hanging the agent, here and on every read.
	flags |= unix.O_NOCTTY | unix.O_NONBLOCK | unix.O_CLOEXEC
	created := flags&unix.O_CREAT != 0
	var fd int
	var err error
	if created {
		// Create exclusively, so that only a file this call made gets mode 0666; an existing
		// file is reopened without O_CREAT and keeps its mode.
		fd, err = openRetry(cpath, flags|unix.O_EXCL)
		if errors.Is(err, unix.EEXIST) {
			created = false
			fd, err = openRetry(cpath, flags&^unix.O_CREAT)
		}
	} else {
		fd, err = openRetry(cpath, flags)
	}
	if err != nil {
		return 0, protocol.Errorf("failed to open file '%s' (mode: '%s'): %s", path, mode, strerror(err))
	}
	if created {
		if err := unix.Fchmod(fd, newFileMode); err != nil {
			unix.Close(fd)
			// The reply is about the fchmod failure; like the reference, a failed cleanup
			// unlink goes unreported.
			_ = unix.Unlink(cpath)
			return 0, protocol.Errorf("failed to set permission 0%03o on new file '%s' (mode: '%s'): %s",
				newFileMode, path, mode, strerror(err))
		}
	}
	if ft.env == nil || ft.env.State == nil {
		unix.Close(fd)
		return 0, protocol.Errorf("failed to commit persistent state to disk")
	}
	h, err := ft.env.State.NextHandle()
	if err != nil {
		unix.Close(fd)
		return 0, err
	}
	ft.mu.Lock()
	ft.files[h] = &guestFile{fd: fd}
	ft.mu.Unlock()
	return h, nil
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// get returns the handle locked; the caller unlocks it.
func (ft *fileTable) get(h int64) (*guestFile, error) {
	ft.mu.Lock()
	f := ft.files[h]
	ft.mu.Unlock()
	if f != nil {
		f.mu.Lock()
		if !f.closed {
			return f, nil
		}
		f.mu.Unlock()
	}
	return nil, protocol.Errorf("handle '%d' has not been found", h)
}

func (ft *fileTable) close(h int64) error {
	f, err := ft.get(h)
	if err != nil {
		return err
	}
	defer f.mu.Unlock()
	ft.mu.Lock()
	delete(ft.files, h)
	ft.mu.Unlock()
	f.closed = true
	if err := unix.Close(f.fd); err != nil {
		return protocol.Errorf("failed to close handle: %s", strerror(err))
	}
	return nil
}

// smallRead is the largest count whose buffer comes from the Go heap, at the size of the count.
// A larger read maps its buffer (readBuffer), starting from what the file can give (readHint)
// and growing it while it fills.
const smallRead = 64 << 10

func (ft *fileTable) read(h, count int64, hasCount bool) (any, error) {
	f, err := ft.get(h)
	if err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	if !hasCount {
		count = defaultReadCount
	} else if count < 0 || count > maxReadCount {
		return nil, protocol.Errorf("value '%d' is invalid for argument count", count)
	}
	if f.state == rwWriting {
		f.state = rwNew // the reference flushes here; nothing is buffered
	}

	var buf []byte
	var mb *readBuffer
	if count <= smallRead {
		buf = make([]byte, count)
	} else {
		if mb, err = mapReadBuffer(min(count, readHint(f.fd))); err != nil {
			return nil, protocol.Errorf("failed to read file: %s", strerror(err))
		}
		buf = mb.mem
	}
	n, eof, err := readInto(f.fd, buf, count, mb)
	if err != nil {
		mb.Release()
		return nil, err
	}
	f.state = rwReading
	if mb != nil {
		buf = mb.mem
	}
	return fileRead{Count: int64(n), BufB64: buf[:n], EOF: eof, mem: mb}, nil
}

// readInto reads up to count bytes into buf, growing it through mb when it fills before
// count (only a mapped buffer grows). It stops at the end of the file (eof) or, once it has
// some bytes, when a pipe is drained.
func readInto(fd int, buf []byte, count int64, mb *readBuffer) (n int, eof bool, err error) {
	for int64(n) < count {
		if n == len(buf) {
			// The file held more than it said: it grew, or it is a pipe or a /proc file.
			if err := mb.grow(int(min(count, max(2*int64(n), smallRead)))); err != nil {
				return 0, false, protocol.Errorf("failed to read file: %s", strerror(err))
			}
			buf = mb.mem
		}
		r, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if n > 0 && err == unix.EAGAIN {
				return n, false, nil // a drained pipe: hand over what came
			}
			return 0, false, protocol.Errorf("failed to read file: %s", strerror(err))
		}
		if r == 0 {
			return n, true, nil
		}
		n += r
	}
	return n, false, nil
}

// readBuffer is the buffer of a large read, mapped from the kernel rather than taken from the
// Go heap. The buffer is the reply's: it goes out base64-encoded while the server writes the
// reply (protocol.WriteResponse), and the server then unmaps it (fileRead.Release), so its
// pages are back with the kernel the moment the reply is out. On the heap, a 48 MiB read left
// the agent about 1 MB larger for good (the runtime's bookkeeping for a heap grown by 48 MiB),
// sent the collector running at every allocation while the reply went out (the buffer alone
// fills the 48 MiB soft memory limit), and needed a forced collection to be returned.
type readBuffer struct {
	mem  []byte // the mapping, as unix.Mmap or unix.Mremap returned it
	once sync.Once
}

func mapReadBuffer(size int64) (*readBuffer, error) {
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map a read buffer of %d bytes: %w", size, err)
	}
	return &readBuffer{mem: mem}, nil
}

// grow makes the buffer size bytes long, keeping its contents (mremap moves the pages).
func (b *readBuffer) grow(size int) error {
	mem, err := unix.Mremap(b.mem, size, unix.MREMAP_MAYMOVE)
	if err != nil {
		return fmt.Errorf("grow a read buffer to %d bytes: %w", size, err)
	}
	b.mem = mem
	return nil
}

// Release unmaps the buffer; a nil buffer (a small read's) has nothing to release, and a
// second call does nothing.
func (b *readBuffer) Release() {
	if b == nil {
		return
	}
	b.once.Do(func() {
		// Unmapping a mapping of our own fails only on a programming error; the pages are
		// lost to the agent either way.
		_ = unix.Munmap(b.mem)
		b.mem = nil
	})
}

// readHint is how many bytes a read at fd's offset can return: for a regular file, what lies
// between the offset and the end plus one byte, the room the read that meets the end needs to
// tell it from a full buffer. For anything else it is a first guess.
func readHint(fd int) int64 {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return smallRead
	}
	pos, err := unix.Seek(fd, 0, unix.SEEK_CUR)
	if err != nil {
		return smallRead
	}
	return max(st.Size-pos, 0) + 1
}

func (ft *fileTable) write(h int64, b64 string, count int64, hasCount bool) (any, error) {
	f, err := ft.get(h)
	if err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	if f.state == rwReading {
		// The reference's fseek(fh, 0, SEEK_CUR) between a read and a write: it has nothing to
		// discard here, but it still fails on a pipe.
		if _, err := unix.Seek(f.fd, 0, unix.SEEK_CUR); err != nil {
			return nil, protocol.Errorf("failed to seek file: %s", strerror(err))
		}
		f.state = rwNew
	}
	data, ok := decodeBase64(b64)
	if !ok {
		return nil, protocol.Errorf("Base64 data contains invalid characters")
	}
	if !hasCount {
		count = int64(len(data))
	} else if count < 0 || count > int64(len(data)) {
		return nil, protocol.Errorf("value '%d' is invalid for argument count", count)
	}
	n := 0
	for int64(n) < count {
		w, err := unix.Write(f.fd, data[n:count])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if n > 0 && err == unix.EAGAIN {
				break // a full pipe: report what went in
			}
			return nil, protocol.Errorf("failed to write to file: %s", strerror(err))
		}
		n += w
	}
	f.state = rwWriting
	return fileWrite{Count: int64(n)}, nil
}

// whence is ga_parse_whence: the integers 0, 1, 2 or the names set, cur, end.
func whence(v any) (int, error) {
	switch w := v.(type) {
	case string:
		switch w {
		case "set":
			return unix.SEEK_SET, nil
		case "cur":
			return unix.SEEK_CUR, nil
		case "end":
			return unix.SEEK_END, nil
		}
		// The dispatcher's enum check makes this unreachable.
		return 0, protocol.Errorf("Parameter 'whence' does not accept value '%s'", w)
	case int64:
		switch w {
		case 0:
			return unix.SEEK_SET, nil
		case 1:
			return unix.SEEK_CUR, nil
		case 2:
			return unix.SEEK_END, nil
		}
		return 0, protocol.Errorf("invalid whence code %d", w)
	}
	return 0, protocol.Errorf("Invalid parameter type for 'whence', expected: GuestFileWhence")
}

func (ft *fileTable) seek(h, offset int64, wh any) (any, error) {
	f, err := ft.get(h)
	if err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	w, err := whence(wh)
	if err != nil {
		return nil, err
	}
	pos, err := unix.Seek(f.fd, offset, w)
	if err != nil {
		if errors.Is(err, unix.ESPIPE) {
			f.state = rwNew
		}
		return nil, protocol.Errorf("failed to seek file: %s", strerror(err))
	}
	f.state = rwNew
	return fileSeek{Position: pos}, nil
}

func (ft *fileTable) flush(h int64) error {
	f, err := ft.get(h)
	if err != nil {
		return err
	}
	defer f.mu.Unlock()
	f.state = rwNew
	return nil
}

// base64Rank is GLib's mime_base64_rank: the value of each base64 character, with '=' worth 0
// and every other byte skipped.
var base64Rank = func() (r [256]byte) {
	for i := range r {
		r[i] = 0xff
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alphabet); i++ {
		r[alphabet[i]] = byte(i)
	}
	r['='] = 0
	return r
}()

// decodeBase64 is QEMU's qbase64_decode: the text may hold only base64 characters, '=' and
// newlines; it is then decoded with g_base64_decode's lenience: '=' counts as a zero digit
// that suppresses output bytes, newlines are skipped, and a trailing partial quantum is
// dropped. So unpadded input decodes, and "QQ==QUJD" is four bytes.
func decodeBase64(s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; base64Rank[c] == 0xff && c != '\n' {
			return nil, false
		}
	}
	out := make([]byte, 0, len(s)/4*3)
	var v uint32
	n := 0
	var last0, last1 byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		rank := base64Rank[c]
		if rank == 0xff {
			continue
		}
		last1, last0 = last0, c
		v = v<<6 | uint32(rank)
		n++
		if n == 4 {
			out = append(out, byte(v>>16))
			if last1 != '=' {
				out = append(out, byte(v>>8))
			}
			if last0 != '=' {
				out = append(out, byte(v))
			}
			n = 0
		}
	}
	return out, true
}
