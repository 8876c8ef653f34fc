package commands

import (
	"bytes"
	"context"
	"encoding/base64"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/dispatch/reftest"
	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/agent/state"
	"github.com/qgakit/qgakit/schema"
)

// ftAgent is a dispatcher with the sync, info and file groups over a fresh state directory.
type ftAgent struct {
	d     *dispatch.Dispatcher
	env   *Env
	state string
}

func newFTAgent(t testing.TB) *ftAgent {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(schema.MustLoad(), dispatch.Options{Frozen: st.Frozen})
	env := &Env{State: st, Version: "7.2.22", Info: d.Info}
	registerSync(d, env)
	registerInfo(d, env)
	registerFile(d, env)
	return &ftAgent{d: d, env: env, state: dir}
}

// do runs one command the way the server will, and returns the reply in the form a reference
// reply decodes to.
func (a *ftAgent) do(t testing.TB, name string, args map[string]any) reftest.Reply {
	t.Helper()
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	resp, reply := a.d.Dispatch(context.Background(), protocol.Message{Value: req})
	if !reply {
		t.Fatalf("%s: no reply", name)
	}
	if resp.Err != nil {
		return reftest.Reply{Err: resp.Err}
	}
	// The server releases a reply once it is written; here, once it is copied out.
	if r, ok := resp.Return.(protocol.Releaser); ok {
		defer r.Release()
	}
	ret, err := reftest.Canonical(resp.Return)
	if err != nil {
		t.Fatalf("%s: reply does not encode: %v", name, err)
	}
	return reftest.Reply{Return: ret}
}

func ftOK(t testing.TB, r reftest.Reply) any {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("unexpected error %v", r.Err)
	}
	return r.Return
}

func ftErr(t testing.TB, r reftest.Reply, desc string) {
	t.Helper()
	if r.Err == nil || r.Err.Class != protocol.ClassGenericError || r.Err.Desc != desc {
		t.Fatalf("got %+v, want GenericError %q", r, desc)
	}
}

func (a *ftAgent) open(t testing.TB, path, mode string) int64 {
	t.Helper()
	args := map[string]any{"path": path}
	if mode != "" {
		args["mode"] = mode
	}
	h, ok := ftOK(t, a.do(t, "guest-file-open", args)).(int64)
	if !ok {
		t.Fatalf("open %s: handle is not an integer", path)
	}
	return h
}

type readResult struct {
	count int64
	data  []byte
	eof   bool
}

func (a *ftAgent) read(t testing.TB, h int64, count int64) readResult {
	t.Helper()
	args := map[string]any{"handle": h}
	if count >= 0 {
		args["count"] = count
	}
	m := ftOK(t, a.do(t, "guest-file-read", args)).(map[string]any)
	data, err := base64.StdEncoding.DecodeString(m["buf-b64"].(string))
	if err != nil {
		t.Fatalf("buf-b64 %q: %v", m["buf-b64"], err)
	}
	r := readResult{count: m["count"].(int64), data: data, eof: m["eof"].(bool)}
	if int64(len(data)) != r.count {
		t.Fatalf("count %d but %d bytes", r.count, len(data))
	}
	return r
}

func (a *ftAgent) write(t testing.TB, h int64, data []byte) int64 {
	t.Helper()
	m := ftOK(t, a.do(t, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(data)})).(map[string]any)
	if m["eof"] != false {
		t.Fatalf("write eof %v", m["eof"])
	}
	return m["count"].(int64)
}

func (a *ftAgent) seek(t testing.TB, h, offset int64, whence any) int64 {
	t.Helper()
	m := ftOK(t, a.do(t, "guest-file-seek", map[string]any{"handle": h, "offset": offset, "whence": whence})).(map[string]any)
	if m["eof"] != false {
		t.Fatalf("seek eof %v", m["eof"])
	}
	return m["position"].(int64)
}

func ftWriteFile(t testing.TB, path string, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFileOpsOfTestQGA(t *testing.T) {
	// QEMU's /qga/file-ops and /qga/file-write-read, step by step.
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "foo")
	hello := []byte("Hello World!\n\x00")
	h := a.open(t, path, "w+")
	if h != 1000 {
		t.Errorf("first handle %d, want 1000", h)
	}
	if n := a.write(t, h, hello); n != 14 {
		t.Fatalf("wrote %d", n)
	}
	ftOK(t, a.do(t, "guest-file-flush", map[string]any{"handle": h}))
	ftOK(t, a.do(t, "guest-file-close", map[string]any{"handle": h}))
	if b, _ := os.ReadFile(path); !bytes.Equal(b, hello) {
		t.Fatalf("file holds %q", b)
	}
	h = a.open(t, path, "r")
	if r := a.read(t, h, -1); r.count != 14 || !r.eof || !bytes.Equal(r.data, hello) {
		t.Fatalf("read %+v", r)
	}
	if r := a.read(t, h, -1); r.count != 0 || !r.eof {
		t.Fatalf("read at eof %+v", r)
	}
	if p := a.seek(t, h, 6, "set"); p != 6 {
		t.Fatalf("position %d", p)
	}
	if r := a.read(t, h, -1); string(r.data) != "World!\n\x00" || !r.eof {
		t.Fatalf("read after seek %+v", r)
	}
	ftOK(t, a.do(t, "guest-file-close", map[string]any{"handle": h}))

	h = a.open(t, path, "w+")
	a.write(t, h, hello)
	if r := a.read(t, h, -1); r.count != 0 || !r.eof {
		t.Fatalf("read right after write %+v", r)
	}
	if p := a.seek(t, h, 0, "set"); p != 0 {
		t.Fatalf("position %d", p)
	}
	if r := a.read(t, h, -1); !bytes.Equal(r.data, hello) || !r.eof {
		t.Fatalf("read back %+v", r)
	}
}

func TestReadEOFIsPerCall(t *testing.T) {
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "ten")
	ftWriteFile(t, path, "0123456789")
	h := a.open(t, path, "")
	steps := []struct {
		count int64
		data  string
		eof   bool
	}{
		{10, "0123456789", false}, // exactly the rest: the end is not met yet
		{10, "", true},
		{0, "", false}, // count 0 reads nothing, not even the end
		{5, "", true},
	}
	for i, s := range steps {
		if r := a.read(t, h, s.count); string(r.data) != s.data || r.eof != s.eof {
			t.Fatalf("step %d: read(%d) = %q eof %v, want %q eof %v", i, s.count, r.data, r.eof, s.data, s.eof)
		}
	}
	a.seek(t, h, 0, int64(0))
	for i, s := range []struct {
		count int64
		data  string
		eof   bool
	}{{4, "0123", false}, {6, "456789", false}, {1, "", true}, {-1, "", true}} {
		if r := a.read(t, h, s.count); string(r.data) != s.data || r.eof != s.eof {
			t.Fatalf("second pass %d: %q eof %v", i, r.data, r.eof)
		}
	}
	a.seek(t, h, -5, "end")
	if r := a.read(t, h, 100); string(r.data) != "56789" || !r.eof {
		t.Fatalf("read past the end %+v", r)
	}
	if p := a.seek(t, h, 20, int64(0)); p != 20 {
		t.Fatalf("seek past the end: %d", p)
	}
	if r := a.read(t, h, -1); r.count != 0 || !r.eof {
		t.Fatalf("read beyond the end %+v", r)
	}
}

func TestReadCountLimits(t *testing.T) {
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "big")
	data := make([]byte, 5000)
	rand.New(rand.NewSource(1)).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	h := a.open(t, path, "r")
	for _, c := range []int64{-1, maxReadCount + 1, 1 << 40} {
		ftErr(t, a.do(t, "guest-file-read", map[string]any{"handle": h, "count": c}),
			"value '"+itoa64(c)+"' is invalid for argument count")
	}
	// No count: 4096 bytes.
	if r := a.read(t, h, -1); r.count != 4096 || r.eof || !bytes.Equal(r.data, data[:4096]) {
		t.Fatalf("default read: count %d eof %v", r.count, r.eof)
	}
	// The maximum is accepted (and, being larger than the rest, meets the end).
	if r := a.read(t, h, maxReadCount); r.count != 904 || !r.eof || !bytes.Equal(r.data, data[4096:]) {
		t.Fatalf("max read: count %d eof %v", r.count, r.eof)
	}
}

func TestWritesAreNotBufferedInTheAgent(t *testing.T) {
	// Better than the reference, whose stdio buffer keeps small writes from the file until a
	// flush, read, seek or close (qemu-ga 7.2 on this host: size 0 after a 5-byte write). Here
	// the bytes are in the kernel when the reply says so: another reader sees them, and an
	// agent killed right now would lose nothing it acknowledged.
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "unbuffered")
	h := a.open(t, path, "w")
	for i, chunk := range []string{"hello", " ", "world"} {
		a.write(t, h, []byte(chunk))
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Join([]string{"hello", " ", "world"}[:i+1], ""); string(got) != want {
			t.Fatalf("after write %d the file holds %q, want %q without any flush", i, got, want)
		}
	}
}

func TestWriteCountAndBase64(t *testing.T) {
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "w")
	h := a.open(t, path, "w+")
	b64 := base64.StdEncoding.EncodeToString([]byte("XYZ"))
	w := func(args map[string]any) reftest.Reply {
		args["handle"] = h
		return a.do(t, "guest-file-write", args)
	}
	if m := ftOK(t, w(map[string]any{"buf-b64": b64, "count": int64(2)})).(map[string]any); m["count"] != int64(2) {
		t.Fatalf("count 2 wrote %v", m["count"])
	}
	ftErr(t, w(map[string]any{"buf-b64": b64, "count": int64(4)}), "value '4' is invalid for argument count")
	ftErr(t, w(map[string]any{"buf-b64": b64, "count": int64(-1)}), "value '-1' is invalid for argument count")
	for _, bad := range []string{"ab$c", "QUJD\x00", "QU JD", "QUJD\r\n", "QUJD-_", "é"} {
		ftErr(t, w(map[string]any{"buf-b64": bad}), "Base64 data contains invalid characters")
	}
	for _, c := range []struct {
		b64  string
		want string
	}{
		{"QUJDRA", "ABC"}, // unpadded: the partial quantum is dropped, as GLib does
		{"QU\nJD", "ABC"},
		{"QQ==QUJD", "AABC"},
		{"Q=Q=====Q", "@\x04\x00"},
		{"", ""},
		{"QUI=", "AB"},
		{"====", "\x00"},
	} {
		before, _ := os.ReadFile(path)
		m := ftOK(t, w(map[string]any{"buf-b64": c.b64})).(map[string]any)
		after, _ := os.ReadFile(path)
		if got := string(after[len(before):]); m["count"] != int64(len(c.want)) || got != c.want {
			t.Errorf("%q wrote %v bytes %q, want %q", c.b64, m["count"], got, c.want)
		}
	}
	if got, _ := os.ReadFile(path); string(got) != "XYABCABCAABC@\x04\x00AB\x00" {
		t.Errorf("file holds %q", got)
	}
}

func TestDecodeBase64RoundTrips(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for i := 0; i < 500; i++ {
		b := make([]byte, rng.Intn(300))
		rng.Read(b)
		got, ok := decodeBase64(base64.StdEncoding.EncodeToString(b))
		if !ok || !bytes.Equal(got, b) {
			t.Fatalf("round trip of %d bytes failed", len(b))
		}
		if s := encodeBase64(b); s != base64.StdEncoding.EncodeToString(b) {
			t.Fatalf("encodeBase64 differs for %d bytes", len(b))
		}
	}
}

// encodeBase64 is the text guest-file-read's reply carries for b: the encoder's JSON string
// for the reply's protocol.Base64, without its quotes.
func encodeBase64(b []byte) string {
	s := protocol.AppendValue(nil, fileRead{BufB64: b})
	_, s, _ = bytes.Cut(s, []byte(`"buf-b64": "`))
	s, _, _ = bytes.Cut(s, []byte(`"`))
	return string(s)
}

// A large count costs a buffer the size of what the file holds, not of the count, and the
// buffer is mapped outside the Go heap: a host that asks for 48 MiB at a time of a small file
// must not make the agent allocate 48 MiB, and a large read must not grow the heap. Release
// gives the mapping back.
func TestLargeReadsMapWhatTheFileHolds(t *testing.T) {
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "small")
	data := make([]byte, 200<<10)
	rand.New(rand.NewSource(2)).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	h := a.open(t, path, "r")
	read := protocol.Message{Value: map[string]any{"execute": "guest-file-read",
		"arguments": map[string]any{"handle": h, "count": int64(maxReadCount)}}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, _ := a.d.Dispatch(context.Background(), read)
	runtime.ReadMemStats(&after)
	r, ok := resp.Return.(fileRead)
	if !ok || r.Count != int64(len(data)) || !r.EOF || !bytes.Equal(r.BufB64, data) {
		t.Fatalf("read %+v, want the %d bytes and eof", resp.Err, len(data))
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d bytes allocated on the heap to read %d bytes with count %d", allocated, len(data), maxReadCount)
	if allocated > 16<<10 {
		t.Errorf("%d bytes allocated on the heap for a large read, want its buffer mapped", allocated)
	}
	if r.mem == nil || len(r.mem.mem) != len(data)+1 {
		t.Fatalf("the reply's buffer is not a mapping of the file's size plus one: %v", r.mem)
	}
	addr, size := &r.mem.mem[0], len(r.mem.mem)
	if !mapped(addr, size) {
		t.Fatal("the buffer's pages are not mapped")
	}
	var rel protocol.Releaser = r
	rel.Release()
	rel.Release() // a second release must not unmap whatever took the address meanwhile
	if mapped(addr, size) {
		t.Fatal("the buffer is still mapped after Release")
	}

	// Exactly the rest of the file, with a large count: the end is not met yet, as with small
	// counts (TestReadEOFIsPerCall).
	a.seek(t, h, 0, "set")
	if r := a.read(t, h, int64(len(data))); r.count != int64(len(data)) || r.eof || !bytes.Equal(r.data, data) {
		t.Fatalf("read of exactly the rest: count %d eof %v", r.count, r.eof)
	}
	if r := a.read(t, h, maxReadCount); r.count != 0 || !r.eof {
		t.Fatalf("read at the end: count %d eof %v", r.count, r.eof)
	}
	// A file that grew after its size was taken is read whole: the buffer grows.
	a.seek(t, h, 0, "set")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if r := a.read(t, h, maxReadCount); r.count != 2*int64(len(data)) || !r.eof ||
		!bytes.Equal(r.data[:len(data)], data) || !bytes.Equal(r.data[len(data):], data) {
		t.Fatalf("read of the grown file: count %d eof %v", r.count, r.eof)
	}
}

// mapped reports whether the size bytes from addr are mapped: msync(2) fails with ENOMEM for a
// range that is not (and does nothing to an anonymous mapping).
func mapped(addr *byte, size int) bool {
	return unix.Msync(unsafe.Slice(addr, size), unix.MS_ASYNC) == nil
}

// Files whose size says nothing of what they hold: a /proc file (size 0) and a pipe holding
// more than the first buffer. Their reads grow the buffer and return everything there is.
func TestLargeReadsOfFilesWithoutASize(t *testing.T) {
	a := newFTAgent(t)
	want, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skip(err)
	}
	h := a.open(t, "/proc/self/mountinfo", "r")
	if r := a.read(t, h, maxReadCount); !r.eof || r.count == 0 || !bytes.HasPrefix(r.data, want[:bytes.IndexByte(want, ' ')+1]) {
		t.Fatalf("/proc/self/mountinfo: count %d eof %v, starts %.40q", r.count, r.eof, r.data)
	}

	hp, w := ftFIFO(t, a, "r")
	size, err := unix.FcntlInt(uintptr(w), unix.F_SETPIPE_SZ, 1<<20)
	if err != nil {
		t.Skipf("cannot grow the pipe: %v", err)
	}
	data := make([]byte, min(size, 1<<20)-1000)
	rand.New(rand.NewSource(3)).Read(data)
	if n, err := unix.Write(w, data); err != nil || n != len(data) {
		t.Fatalf("filling the pipe: %d, %v", n, err)
	}
	if r := a.read(t, hp, maxReadCount); r.count != int64(len(data)) || r.eof || !bytes.Equal(r.data, data) {
		t.Fatalf("pipe: count %d of %d, eof %v", r.count, len(data), r.eof)
	}
}

func TestSeekWhence(t *testing.T) {
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "s")
	ftWriteFile(t, path, "0123456789")
	h := a.open(t, path, "r")
	for _, c := range []struct {
		offset int64
		whence any
		want   int64
	}{
		{3, "set", 3}, {2, "cur", 5}, {-1, "end", 9}, {1, int64(0), 1}, {1, int64(1), 2}, {0, int64(2), 10},
	} {
		if p := a.seek(t, h, c.offset, c.whence); p != c.want {
			t.Errorf("seek(%d, %v) = %d, want %d", c.offset, c.whence, p, c.want)
		}
	}
	for _, w := range []int64{3, -1, 1 << 40} {
		ftErr(t, a.do(t, "guest-file-seek", map[string]any{"handle": h, "offset": int64(0), "whence": w}),
			"invalid whence code "+itoa64(w))
	}
	ftErr(t, a.do(t, "guest-file-seek", map[string]any{"handle": h, "offset": int64(-100), "whence": "cur"}),
		"failed to seek file: Invalid argument")
	if p := a.seek(t, h, 0, "cur"); p != 10 {
		t.Errorf("a failed seek moved the position to %d", p)
	}
}

func TestOpenModes(t *testing.T) {
	a := newFTAgent(t)
	dir := t.TempDir()
	for _, c := range []struct {
		mode           string
		read, write    bool
		create, trunc  bool
		appendsAtWrite bool
	}{
		{"r", true, false, false, false, false}, {"rb", true, false, false, false, false},
		{"w", false, true, true, true, false}, {"wb", false, true, true, true, false},
		{"a", false, true, true, false, true}, {"ab", false, true, true, false, true},
		{"r+", true, true, false, false, false}, {"rb+", true, true, false, false, false}, {"r+b", true, true, false, false, false},
		{"w+", true, true, true, true, false}, {"wb+", true, true, true, true, false}, {"w+b", true, true, true, true, false},
		{"a+", true, true, true, false, true}, {"ab+", true, true, true, false, true}, {"a+b", true, true, true, false, true},
	} {
		missing := filepath.Join(dir, "missing-"+c.mode)
		r := a.do(t, "guest-file-open", map[string]any{"path": missing, "mode": c.mode})
		if !c.create {
			ftErr(t, r, "failed to open file '"+missing+"' (mode: '"+c.mode+"'): No such file or directory")
		} else {
			h := ftOK(t, r).(int64)
			ftOK(t, a.do(t, "guest-file-close", map[string]any{"handle": h}))
		}

		path := filepath.Join(dir, "existing-"+c.mode)
		ftWriteFile(t, path, "0123456789")
		h := a.open(t, path, c.mode)
		rr := a.do(t, "guest-file-read", map[string]any{"handle": h, "count": int64(3)})
		if c.read {
			want := "012"
			if c.trunc {
				want = ""
			}
			if m := ftOK(t, rr).(map[string]any); m["buf-b64"] != base64.StdEncoding.EncodeToString([]byte(want)) {
				t.Errorf("%s: read %v", c.mode, m)
			}
		} else {
			ftErr(t, rr, "failed to read file: Bad file descriptor")
		}
		a.seek(t, h, 0, "set")
		wr := a.do(t, "guest-file-write", map[string]any{"handle": h, "buf-b64": "QUI="})
		if c.write {
			ftOK(t, wr)
		} else {
			ftErr(t, wr, "failed to write to file: Bad file descriptor")
		}
		ftOK(t, a.do(t, "guest-file-close", map[string]any{"handle": h}))
		got, _ := os.ReadFile(path)
		want := "0123456789"
		switch {
		case c.write && c.trunc:
			want = "AB"
		case c.write && c.appendsAtWrite:
			want = "0123456789AB"
		case c.write:
			want = "AB23456789"
		}
		if string(got) != want {
			t.Errorf("%s: file holds %q, want %q", c.mode, got, want)
		}
	}
	for _, bad := range []string{"rw", "R", " r", "r ", "", "rb+x", "x"} {
		ftErr(t, a.do(t, "guest-file-open", map[string]any{"path": filepath.Join(dir, "x"), "mode": bad}),
			"invalid file open mode '"+bad+"'")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Error("an invalid mode created the file")
	}
}

func TestCreatedFilesAre0666WhateverTheUmask(t *testing.T) {
	a := newFTAgent(t)
	dir := t.TempDir()
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, mode := range []string{"w", "a+", "wb+"} {
		path := filepath.Join(dir, "new-"+mode)
		a.open(t, path, mode)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o666 {
			t.Errorf("%s: new file mode %04o, want 0666", mode, fi.Mode().Perm())
		}
	}
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(existing, 0o640); err != nil {
		t.Fatal(err)
	}
	a.open(t, existing, "w")
	if fi, _ := os.Stat(existing); fi.Mode().Perm() != 0o640 {
		t.Errorf("existing file's mode changed to %04o", fi.Mode().Perm())
	}
}

func TestOpenErrors(t *testing.T) {
	a := newFTAgent(t)
	dir := t.TempDir()
	ftErr(t, a.do(t, "guest-file-open", map[string]any{"path": dir, "mode": "w"}),
		"failed to open file '"+dir+"' (mode: 'w'): Is a directory")
	h := a.open(t, dir, "r")
	ftErr(t, a.do(t, "guest-file-read", map[string]any{"handle": h}), "failed to read file: Is a directory")
	ftErr(t, a.do(t, "guest-file-open", map[string]any{"path": filepath.Join(dir, "no", "such")}),
		"failed to open file '"+filepath.Join(dir, "no", "such")+"' (mode: 'r'): No such file or directory")
	// Failed opens consumed no handle.
	if h2 := a.open(t, dir, "r"); h2 != h+1 {
		t.Errorf("handle after failed opens %d, want %d", h2, h+1)
	}
}

func TestHandlesAndTheStateFile(t *testing.T) {
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "f")
	ftWriteFile(t, path, "x")
	for want := int64(1000); want < 1003; want++ {
		if h := a.open(t, path, "r"); h != want {
			t.Fatalf("handle %d, want %d", h, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(a.state, "qga.state")); string(b) != "[global]\nfd_counter=1003\n" {
		t.Fatalf("qga.state %q", b)
	}
	// A restarted agent continues after the last handle.
	b := newFTAgentIn(t, a.state)
	if h := b.open(t, path, "r"); h != 1003 {
		t.Fatalf("after restart handle %d, want 1003", h)
	}
	// Handles are per agent: the new one does not know the old one's.
	ftErr(t, b.do(t, "guest-file-read", map[string]any{"handle": int64(1000)}), "handle '1000' has not been found")

	// When the counter cannot be persisted, the reference's text, and no descriptor leaks.
	if err := os.Remove(filepath.Join(a.state, "qga.state")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(a.state, "qga.state", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	fds := ftOpenFDs(t)
	ftErr(t, b.do(t, "guest-file-open", map[string]any{"path": path}), "failed to commit persistent state to disk")
	if got := ftOpenFDs(t); got != fds {
		t.Errorf("open descriptors %d → %d after a failed persist", fds, got)
	}
}

func newFTAgentIn(t testing.TB, stateDir string) *ftAgent {
	t.Helper()
	st, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(schema.MustLoad(), dispatch.Options{Frozen: st.Frozen})
	env := &Env{State: st, Version: "7.2.22", Info: d.Info}
	registerFile(d, env)
	return &ftAgent{d: d, env: env, state: stateDir}
}

func ftOpenFDs(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func TestUnknownHandles(t *testing.T) {
	a := newFTAgent(t)
	path := filepath.Join(t.TempDir(), "f")
	ftWriteFile(t, path, "x")
	h := a.open(t, path, "r")
	ftOK(t, a.do(t, "guest-file-close", map[string]any{"handle": h}))
	for _, hh := range []int64{h, 12345, -1} {
		want := "handle '" + itoa64(hh) + "' has not been found"
		// The handle is looked up before any other argument is judged.
		ftErr(t, a.do(t, "guest-file-close", map[string]any{"handle": hh}), want)
		ftErr(t, a.do(t, "guest-file-flush", map[string]any{"handle": hh}), want)
		ftErr(t, a.do(t, "guest-file-read", map[string]any{"handle": hh, "count": int64(-1)}), want)
		ftErr(t, a.do(t, "guest-file-write", map[string]any{"handle": hh, "buf-b64": "$$"}), want)
		ftErr(t, a.do(t, "guest-file-seek", map[string]any{"handle": hh, "offset": int64(0), "whence": int64(9)}), want)
	}
}

// ftFIFO makes a FIFO and opens it in the agent with mode; writer is a non-blocking write end
// held by the test.
func ftFIFO(t *testing.T, a *ftAgent, mode string) (h int64, writer int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	h = a.open(t, path, mode)
	w, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(w) })
	return h, w
}

func TestFIFOs(t *testing.T) {
	a := newFTAgent(t)
	h, w := ftFIFO(t, a, "r")
	// A writer but no data: the read does not block the agent, it fails like the reference's.
	ftErr(t, a.do(t, "guest-file-read", map[string]any{"handle": h}), "failed to read file: Resource temporarily unavailable")
	if _, err := unix.Write(w, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	// Better than the reference, which reads these 5 bytes into its stdio buffer, meets EAGAIN,
	// answers with an error and loses them: here they are returned.
	if r := a.read(t, h, 10); string(r.data) != "hello" || r.eof {
		t.Fatalf("partial read of a pipe %+v", r)
	}
	ftErr(t, a.do(t, "guest-file-seek", map[string]any{"handle": h, "offset": int64(0), "whence": "cur"}), "failed to seek file: Illegal seek")
	ftErr(t, a.do(t, "guest-file-write", map[string]any{"handle": h, "buf-b64": "QUJD"}), "failed to write to file: Bad file descriptor")
	unix.Close(w)
	if r := a.read(t, h, -1); r.count != 0 || !r.eof {
		t.Fatalf("read without a writer %+v", r)
	}

	// r+ on a FIFO: the reference's fseek(SEEK_CUR) between a read and a write fails, and keeps
	// failing until a seek or flush resets the stream state.
	h2, _ := ftFIFO(t, a, "r+")
	a.write(t, h2, []byte("ABC"))
	if r := a.read(t, h2, 2); string(r.data) != "AB" {
		t.Fatalf("r+ read %+v", r)
	}
	for i := 0; i < 2; i++ {
		ftErr(t, a.do(t, "guest-file-write", map[string]any{"handle": h2, "buf-b64": "QUJD"}), "failed to seek file: Illegal seek")
	}
	ftOK(t, a.do(t, "guest-file-flush", map[string]any{"handle": h2}))
	if n := a.write(t, h2, []byte("DE")); n != 2 {
		t.Fatalf("write after flush: %d", n)
	}
	if r := a.read(t, h2, 10); string(r.data) != "CDE" || r.eof {
		t.Fatalf("r+ read back %+v", r)
	}
}

func TestSyncPingAndInfo(t *testing.T) {
	a := newFTAgent(t)
	ctx := context.Background()
	resp, _ := a.d.Dispatch(ctx, protocol.Message{Value: map[string]any{"execute": "guest-sync-delimited", "arguments": map[string]any{"id": int64(-7)}}})
	if resp.Err != nil || !resp.Delimited || resp.Return != int64(-7) {
		t.Errorf("guest-sync-delimited: %+v", resp)
	}
	resp, _ = a.d.Dispatch(ctx, protocol.Message{Value: map[string]any{"execute": "guest-sync", "arguments": map[string]any{"id": int64(1) << 62}}})
	if resp.Err != nil || resp.Delimited || resp.Return != int64(1)<<62 {
		t.Errorf("guest-sync: %+v", resp)
	}
	if r := a.do(t, "guest-ping", nil); r.Err != nil || len(r.Return.(map[string]any)) != 0 {
		t.Errorf("guest-ping: %+v", r)
	}

	info := ftOK(t, a.do(t, "guest-info", nil)).(map[string]any)
	if info["version"] != "7.2.22" {
		t.Errorf("version %v", info["version"])
	}
	cmds := info["supported_commands"].([]any)
	if len(cmds) != 10 {
		t.Fatalf("%d commands listed, want the 10 registered here", len(cmds))
	}
	first := cmds[0].(map[string]any)
	if first["name"] != "guest-file-flush" || first["enabled"] != true || first["success-response"] != true {
		t.Errorf("first entry %v", first)
	}
	if last := cmds[len(cmds)-1].(map[string]any); last["name"] != "guest-sync-delimited" {
		t.Errorf("last entry %v", last)
	}
	// enabled is evaluated now: frozen, the file commands are off.
	if err := a.env.State.SetFrozen(true); err != nil {
		t.Fatal(err)
	}
	for _, c := range ftOK(t, a.do(t, "guest-info", nil)).(map[string]any)["supported_commands"].([]any) {
		m := c.(map[string]any)
		if want := !strings.HasPrefix(m["name"].(string), "guest-file-"); m["enabled"] != want {
			t.Errorf("frozen: %v", m)
		}
	}

	// Without a dispatcher behind it, the list is empty, not null.
	ret := agentInfo(&Env{Version: "v"})
	if ret.SupportedCommands == nil || len(ret.SupportedCommands) != 0 {
		t.Errorf("agentInfo without Info: %#v", ret)
	}
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }
