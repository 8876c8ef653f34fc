package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"runtime"
	"testing"
)

// fileReadReply is guest-file-read's reply as commands builds it, and as it was built before
// Base64 existed, with the encoding already done.
type fileReadReply struct {
	Count  int64  `json:"count"`
	BufB64 Base64 `json:"buf-b64"`
	EOF    bool   `json:"eof"`
}

type fileReadReplyString struct {
	Count  int64  `json:"count"`
	BufB64 string `json:"buf-b64"`
	EOF    bool   `json:"eof"`
}

func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// Sizes around the edges of base64 quanta and of the pieces WriteResponse writes.
var base64Sizes = []int{0, 1, 2, 3, 4, 5, 57, streamChunk/4*3 - 1, streamChunk / 4 * 3, streamChunk/4*3 + 1,
	streamChunk - 1, streamChunk, streamChunk + 2, 3*streamChunk + 1, 1 << 20}

// A Base64 value is written exactly as the base64 string it replaces was: the replies stay
// byte-identical to what the agent sent before (and to the reference's).
func TestBase64EncodesAsItsString(t *testing.T) {
	for i, n := range base64Sizes {
		data := randomBytes(n, int64(i))
		str := base64.StdEncoding.EncodeToString(data)
		for _, id := range []Response{{}, {ID: "x", HasID: true}, {ID: int64(7), HasID: true, Delimited: true}} {
			r := id
			r.Return = fileReadReply{Count: int64(n), BufB64: data, EOF: n%2 == 0}
			old := id
			old.Return = fileReadReplyString{Count: int64(n), BufB64: str, EOF: n%2 == 0}
			if got, want := AppendResponse(nil, &r), AppendResponse(nil, &old); !bytes.Equal(got, want) {
				t.Fatalf("%d bytes: AppendResponse differs from the string form:\n got %.200q\nwant %.200q", n, got, want)
			}
		}
		if got, want := string(AppendValue(nil, Base64(data))), `"`+str+`"`; got != want {
			t.Fatalf("%d bytes: AppendValue gives %.100q, want %.100q", n, got, want)
		}
	}
	// Every way a value can reach the encoder: boxed, behind a pointer, in a map, a list, and
	// a struct field through reflection.
	data := Base64("hello, world")
	want := `"aGVsbG8sIHdvcmxk"`
	for name, v := range map[string]any{
		"value": data, "pointer": &data, "map": map[string]Base64{"k": data}, "list": []any{data},
		"typed list": []Base64{data}, "anonymous struct": struct{ B Base64 }{data},
	} {
		got := string(AppendValue(nil, v))
		if !bytes.Contains([]byte(got), []byte(want)) || bytes.Contains([]byte(got), []byte("104")) {
			t.Errorf("%s: %s does not hold %s as a string", name, got, want)
		}
	}
	if got := string(AppendValue(nil, Base64(nil))); got != `""` {
		t.Errorf("nil Base64 is %s, want \"\"", got)
	}
	if got := string(AppendValue(nil, struct {
		B Base64 `json:"b,omitempty"`
	}{})); got != "{}" {
		t.Errorf("empty Base64 with omitempty is %s, want {}", got)
	}
}

// encoding/json sees the same string (the test helpers that canonicalise replies use it), and
// never null.
func TestBase64MarshalJSON(t *testing.T) {
	for i, n := range []int{0, 1, 2, 3, 1000} {
		data := randomBytes(n, int64(i))
		got, err := json.Marshal(fileReadReply{Count: int64(n), BufB64: data})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(fileReadReplyString{Count: int64(n), BufB64: base64.StdEncoding.EncodeToString(data)})
		if !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: json.Marshal gives %s, want %s", n, got, want)
		}
	}
	if got, _ := json.Marshal(Base64(nil)); string(got) != `""` {
		t.Fatalf("nil Base64 marshals to %s", got)
	}
}

// writeRecorder keeps what it was given and the size of its largest write.
type writeRecorder struct {
	bytes.Buffer
	writes, largest int
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.writes++
	w.largest = max(w.largest, len(p))
	return w.Buffer.Write(p)
}

// WriteResponse writes what AppendResponse appends, for every kind of reply, and a reply
// without a Base64 value in a single write.
func TestWriteResponseEqualsAppendResponse(t *testing.T) {
	replies := []Response{
		{}, {Return: []any{int64(1), "two", map[string]any{"aq": 2, "aa": 1}}},
		{Return: "x", ID: "abc", HasID: true}, {HasID: true},
		{Err: Errorf("bad %d", 1), Return: "ignored"},
		{Err: &Error{Class: ClassCommandNotFound, Desc: "x"}, ID: int64(1), HasID: true},
		{Return: int64(5), Delimited: true},
		{Return: string(randomBytes(300<<10, 9))}, // a large value that is not Base64
	}
	plain := len(replies) // the replies before this hold no Base64
	for i, n := range base64Sizes {
		replies = append(replies,
			Response{Return: fileReadReply{Count: int64(n), BufB64: randomBytes(n, int64(i)), EOF: true}, ID: int64(i), HasID: true},
			Response{Return: []any{Base64(randomBytes(n, int64(i))), Base64(randomBytes(n/2, int64(i)))}, Delimited: true})
	}
	for i, r := range replies {
		want := AppendResponse(nil, &r)
		var w writeRecorder
		n, err := WriteResponse(&w, &r)
		if err != nil || n != int64(len(want)) || !bytes.Equal(w.Bytes(), want) {
			t.Fatalf("reply %d: wrote %d bytes (%v), %.120q; want %d bytes %.120q", i, n, err, w.Bytes(), len(want), want)
		}
		if size := ResponseSize(&r); size != int64(len(want)) {
			t.Errorf("reply %d: ResponseSize %d, want %d", i, size, len(want))
		}
		if i < plain && w.writes != 1 {
			t.Errorf("reply %d: %d writes for a reply without Base64", i, w.writes)
		}
	}
}

// The point of WriteResponse: a 48 MiB read's reply goes out in pieces of at most streamChunk
// bytes and costs neither its 64 MiB of base64 nor any memory in proportion to it.
func TestWriteResponseStreams(t *testing.T) {
	data := randomBytes(48<<20, 1)
	r := &Response{Return: fileReadReply{Count: int64(len(data)), BufB64: data, EOF: true}, ID: "id", HasID: true}
	w := &hashWriter{}
	if _, err := WriteResponse(w, r); err != nil { // warm the pool, so the measured run reuses its buffer
		t.Fatal(err)
	}
	*w = hashWriter{}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n, err := WriteResponse(w, r)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	want := ResponseSize(r)
	if n != want || w.n != want {
		t.Fatalf("wrote %d bytes (writer saw %d), want %d", n, w.n, want)
	}
	// The last write may carry the end of the reply after a full piece.
	if limit := streamChunk + 1<<10; w.largest > limit {
		t.Errorf("largest write %d bytes, want at most %d", w.largest, limit)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d writes, largest %d bytes, %d bytes allocated for a %d MiB reply", w.writes, w.largest, allocated, want>>20)
	if allocated > 1<<20 {
		t.Errorf("%d bytes allocated to write a %d MiB reply, want under 1 MiB", allocated, want>>20)
	}
	// The bytes themselves: the head and tail around the payload, and the payload's decoding.
	head := `{"return": {"count": 50331648, "buf-b64": "`
	if !bytes.HasPrefix(w.head.Bytes(), []byte(head)) {
		t.Fatalf("reply starts %.80q, want %q", w.head.Bytes(), head)
	}
	tail := `", "eof": true}, "id": "id"}` + "\n"
	if !bytes.HasSuffix(w.tail, []byte(tail)) {
		t.Fatalf("reply ends %q, want %q", w.tail, tail)
	}
	full := AppendResponse(nil, r)
	if w.sum != checksum(full) {
		t.Fatal("the streamed reply differs from AppendResponse's")
	}
}

// hashWriter keeps a reply's first and last bytes and a checksum of all of it, so a test can
// compare a 64 MiB reply without holding it.
type hashWriter struct {
	head            bytes.Buffer
	tail            []byte
	sum             uint64
	n               int64
	writes, largest int
}

func (w *hashWriter) Write(p []byte) (int, error) {
	w.writes++
	w.largest = max(w.largest, len(p))
	if w.head.Len() < 256 {
		w.head.Write(p[:min(len(p), 256)])
	}
	w.tail = append(w.tail, p[max(0, len(p)-256):]...)
	if len(w.tail) > 256 {
		w.tail = append(w.tail[:0], w.tail[len(w.tail)-256:]...)
	}
	w.sum = checksumFrom(w.sum, p)
	w.n += int64(len(p))
	return len(p), nil
}

func checksum(b []byte) uint64 { return checksumFrom(0, b) }

// checksumFrom is FNV-1a, which depends on where each byte is, not only on which bytes there are.
func checksumFrom(h uint64, b []byte) uint64 {
	if h == 0 {
		h = 14695981039346656037
	}
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}

// failingWriter accepts limit bytes, then fails every write; it counts the writes it was
// asked for after it had failed one.
type failingWriter struct {
	limit, got int
	failed     bool
	callsAfter int
	short      bool // fail without an error: a short count alone
	err        error
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.failed {
		w.callsAfter++
	}
	n := min(len(p), w.limit-w.got)
	w.got += n
	if n < len(p) {
		w.failed = true
		if w.short {
			return n, nil
		}
		return n, w.err
	}
	return n, nil
}

// A writer that fails (a host that went away) ends the reply: WriteResponse reports the
// error and the bytes that went out, and does not write again.
func TestWriteResponseStopsAtTheFirstError(t *testing.T) {
	boom := errors.New("peer gone")
	r := &Response{Return: fileReadReply{Count: 4 << 20, BufB64: randomBytes(4<<20, 3)}}
	for _, limit := range []int{0, 10, streamChunk + 5, 3 << 20} {
		w := &failingWriter{limit: limit, err: boom}
		n, err := WriteResponse(w, r)
		if !errors.Is(err, boom) || n != int64(limit) {
			t.Errorf("limit %d: wrote %d, %v; want %d, %v", limit, n, err, limit, boom)
		}
		if w.callsAfter > 0 {
			t.Errorf("limit %d: %d writes after the failure", limit, w.callsAfter)
		}
	}
	w := &failingWriter{limit: 100, short: true}
	if n, err := WriteResponse(w, r); !errors.Is(err, io.ErrShortWrite) || n != 100 {
		t.Errorf("short write: wrote %d, %v; want 100, %v", n, err, io.ErrShortWrite)
	}
}

// BenchmarkWriteFileRead writes a 48 MiB read's reply to a discarding writer: the cost of
// encoding alone, streamed, against AppendResponse into a reused buffer.
func BenchmarkWriteFileRead(b *testing.B) {
	data := randomBytes(48<<20, 1)
	r := &Response{Return: fileReadReply{Count: int64(len(data)), BufB64: data}}
	size := ResponseSize(r)
	b.Run("WriteResponse", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := WriteResponse(io.Discard, r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AppendResponse", func(b *testing.B) {
		var buf []byte
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			buf = AppendResponse(buf[:0], r)
		}
	})
}
