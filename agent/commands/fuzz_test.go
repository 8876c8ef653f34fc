package commands

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch/reftest"
	"github.com/qgakit/qgakit/agent/protocol"
)

// glibBase64Decode is QEMU 7.2's qbase64_decode (util/base64.c) on top of GLib's
// g_base64_decode (glib/gbase64.c, g_base64_decode_step with a zero state), transliterated
// statement by statement as an independent model for decodeBase64.
func glibBase64Decode(in string) ([]byte, bool) {
	const valid = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n"
	// strspn(input, base64_valid_chars) != in_len
	for i := 0; i < len(in); i++ {
		if strings.IndexByte(valid, in[i]) < 0 {
			return nil, false
		}
	}
	rank := func(c byte) (byte, bool) {
		switch {
		case c >= 'A' && c <= 'Z':
			return c - 'A', true
		case c >= 'a' && c <= 'z':
			return c - 'a' + 26, true
		case c >= '0' && c <= '9':
			return c - '0' + 52, true
		case c == '+':
			return 62, true
		case c == '/':
			return 63, true
		case c == '=':
			return 0, true
		}
		return 0xff, false
	}
	var out []byte
	var last [2]byte
	var v uint32
	i := 0
	for p := 0; p < len(in); p++ {
		c := in[p]
		r, ok := rank(c)
		if !ok {
			continue
		}
		last[1] = last[0]
		last[0] = c
		v = v<<6 | uint32(r)
		i++
		if i == 4 {
			out = append(out, byte(v>>16))
			if last[1] != '=' {
				out = append(out, byte(v>>8))
			}
			if last[0] != '=' {
				out = append(out, byte(v))
			}
			i = 0
		}
	}
	return out, true
}

// FuzzDecodeBase64 checks guest-file-write's base64 decoding against the transliteration of
// the reference's, and against encoding/base64 for the canonical encoding of any bytes.
func FuzzDecodeBase64(f *testing.F) {
	for _, s := range []string{"", "QUJD", "QUJDRA", "QUJDRA==", "QQ==QUJD", "Q=Q=====Q", "====", "QU\nJD\n",
		"QUJD\r\n", "ab$c", "QUI=", "=QUJ", "A", "AA", "AAA", "-_-_", "QUJD\x00", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := decodeBase64(s)
		want, wantOK := glibBase64Decode(s)
		if ok != wantOK || !bytes.Equal(got, want) {
			t.Fatalf("%q: decoded %q (%v), the reference's decoder gives %q (%v)", s, got, ok, want, wantOK)
		}
		// The canonical encoding of the input's bytes decodes to those bytes.
		enc := base64.StdEncoding.EncodeToString([]byte(s))
		if back, ok := decodeBase64(enc); !ok || !bytes.Equal(back, []byte(s)) {
			t.Fatalf("%q: its canonical encoding %q decodes to %q (%v)", s, enc, back, ok)
		}
		if encodeBase64([]byte(s)) != enc {
			t.Fatalf("%q: encodeBase64 differs from encoding/base64", s)
		}
	})
}

// FuzzFileOpenArguments opens files with arbitrary mode strings and names (kept inside a
// temporary directory): the mode is accepted exactly when it is one of the reference's, a
// name's NUL becomes the modified UTF-8 the reference's parser makes of it, and every handle
// given out closes once.
func FuzzFileOpenArguments(f *testing.F) {
	for _, m := range []string{"r", "w", "a+b", "rb+", "", "x", "rw", "r+ ", "W", "r\x00", "a+++"} {
		f.Add(m, "name")
	}
	f.Add("w", "a\x00b")
	f.Add("w+", "caf\u00e9")
	f.Add("r", "")
	f.Fuzz(func(t *testing.T, mode, name string) {
		// Keep the path inside the directory: no separators, no dot names.
		name = strings.ReplaceAll(name, "/", "_")
		if name == "." || name == ".." {
			name = "dots"
		}
		a := newFTAgent(t)
		dir := t.TempDir()
		path := filepath.Join(dir, name)
		r := a.do(t, "guest-file-open", map[string]any{"path": path, "mode": mode})
		_, known := openModes[mode]
		if !known {
			if r.Err == nil || r.Err.Desc != fmt.Sprintf("invalid file open mode '%s'", mode) {
				t.Fatalf("mode %q accepted or misreported: %+v", mode, r)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 0 {
				t.Fatalf("mode %q was refused but created %v", mode, entries[0].Name())
			}
			return
		}
		if r.Err != nil {
			// A read mode on a missing file, or a name the file system refuses.
			if !strings.HasPrefix(r.Err.Desc, "failed to open file '"+path+"' (mode: '"+mode+"'): ") {
				t.Fatalf("open %q %q: %v", name, mode, r.Err)
			}
			return
		}
		h, ok := r.Return.(int64)
		if !ok || h < 1000 {
			t.Fatalf("handle %v", r.Return)
		}
		if strings.ContainsRune(mode, 'w') || strings.ContainsRune(mode, 'a') {
			onDisk := filepath.Join(dir, strings.ReplaceAll(name, "\x00", "\xc0\x80"))
			if _, err := os.Stat(onDisk); err != nil && name != "" {
				t.Fatalf("mode %q did not create %q: %v", mode, onDisk, err)
			}
		}
		if r := a.do(t, "guest-file-close", map[string]any{"handle": h}); r.Err != nil {
			t.Fatalf("close: %v", r.Err)
		}
		want := fmt.Sprintf("handle '%d' has not been found", h)
		if r := a.do(t, "guest-file-close", map[string]any{"handle": h}); r.Err == nil || r.Err.Desc != want {
			t.Fatalf("second close: %+v", r)
		}
	})
}

// fileModel is what a file and its handle's position should be after each operation.
type fileModel struct {
	data []byte
	pos  int64
}

// FuzzFileHandle drives one read-write handle with a program of reads, writes (with and
// without count), seeks (every whence form, offsets past either end) and flushes decoded from
// the input, and compares every reply and the file itself with a model of a plain file.
func FuzzFileHandle(f *testing.F) {
	f.Add([]byte{0, 5, 1, 9, 2, 0, 0, 1, 3, 3, 4, 0, 5, 2}, []byte("Hello World!\n\x00"))
	f.Add([]byte{2, 2, 200, 0, 3, 1, 255}, []byte("abc"))
	f.Add([]byte{0, 255, 2, 1, 128, 1, 20, 1, 0}, bytes.Repeat([]byte{0xff}, 300))
	f.Fuzz(func(t *testing.T, prog, payload []byte) {
		if len(prog) > 256 {
			prog = prog[:256]
		}
		a := newFTAgent(t)
		path := filepath.Join(t.TempDir(), "f")
		h := a.open(t, path, "w+")
		m := &fileModel{}
		arg := func(i int) int {
			if i < len(prog) {
				return int(prog[i])
			}
			return 0
		}
		for i := 0; i < len(prog); i += 3 {
			op, x, y := prog[i]%6, arg(i+1), arg(i+2)
			step := fmt.Sprintf("step %d (op %d, %d, %d)", i/3, op, x, y)
			switch op {
			case 0, 5: // write x bytes of the payload, op 5 with count y
				data := payload[:min(x, len(payload))]
				args := map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(data)}
				count := int64(len(data))
				if op == 5 {
					count = int64(y) - 128 // negative and beyond the data too
					args["count"] = count
				}
				r := a.do(t, "guest-file-write", args)
				if count < 0 || count > int64(len(data)) {
					checkErr(t, step, r, fmt.Sprintf("value '%d' is invalid for argument count", count))
					continue
				}
				checkReturn(t, step, r, map[string]any{"count": count, "eof": false})
				m.write(data[:count])
			case 1: // read x bytes, or with the default count when x is 0
				args := map[string]any{"handle": h}
				count := int64(defaultReadCount)
				if x != 0 {
					count = int64(x) - 1
					args["count"] = count
				}
				got, eof := m.read(count)
				checkReturn(t, step, a.do(t, "guest-file-read", args),
					map[string]any{"count": int64(len(got)), "buf-b64": base64.StdEncoding.EncodeToString(got), "eof": eof})
			case 2: // seek by a signed offset with one of six whence forms
				whences := []any{int64(0), int64(1), int64(2), "set", "cur", "end"}
				w := whences[y%6]
				offset := int64(int8(x))
				r := a.do(t, "guest-file-seek", map[string]any{"handle": h, "offset": offset, "whence": w})
				pos, ok := m.seek(offset, y%3)
				if !ok {
					checkErr(t, step, r, "failed to seek file: Invalid argument")
					continue
				}
				checkReturn(t, step, r, map[string]any{"position": pos, "eof": false})
			case 3:
				checkReturn(t, step, a.do(t, "guest-file-flush", map[string]any{"handle": h}), map[string]any{})
			case 4: // a handle that is not open
				other := h + 1 + int64(x)
				checkErr(t, step, a.do(t, "guest-file-read", map[string]any{"handle": other}),
					fmt.Sprintf("handle '%d' has not been found", other))
			}
		}
		checkReturn(t, "close", a.do(t, "guest-file-close", map[string]any{"handle": h}), map[string]any{})
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, m.data) {
			t.Fatalf("the file holds %q (%v), the model %q", got, err, m.data)
		}
	})
}

// write is a write at the position; writing nothing past the end does not extend the file.
func (m *fileModel) write(b []byte) {
	if len(b) == 0 {
		return
	}
	if end := m.pos + int64(len(b)); end > int64(len(m.data)) {
		m.data = append(m.data, make([]byte, end-int64(len(m.data)))...)
	}
	copy(m.data[m.pos:], b)
	m.pos += int64(len(b))
}

// read is fread of count bytes with the reference's eof: set when the read met the end, which
// a read of exactly the remaining bytes does not.
func (m *fileModel) read(count int64) ([]byte, bool) {
	if count == 0 {
		return nil, false
	}
	start := min(m.pos, int64(len(m.data)))
	end := min(m.pos+count, int64(len(m.data)))
	m.pos += end - start
	return m.data[start:end], end-start < count
}

func (m *fileModel) seek(offset int64, whence int) (int64, bool) {
	base := [3]int64{0, m.pos, int64(len(m.data))}[whence]
	if base+offset < 0 {
		return 0, false
	}
	m.pos = base + offset
	return m.pos, true
}

func checkErr(t *testing.T, step string, r reftest.Reply, desc string) {
	t.Helper()
	if r.Err == nil || r.Err.Class != protocol.ClassGenericError || r.Err.Desc != desc {
		t.Fatalf("%s: got %+v, want GenericError %q", step, r, desc)
	}
}

func checkReturn(t *testing.T, step string, r reftest.Reply, want map[string]any) {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("%s: error %v, want %v", step, r.Err, want)
	}
	got, ok := r.Return.(map[string]any)
	if !ok || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: got %v, want %v", step, r.Return, want)
	}
}
