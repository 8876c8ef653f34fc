package protocol

import (
	"encoding/base64"
	"strings"
	"testing"
)

// Benchmarks report; they assert nothing about time. Run them with
// `go test -run XXX -bench . -benchmem ./agent/protocol/`.

func BenchmarkDecodePing(b *testing.B) {
	in := []byte(`{"execute":"guest-ping"}` + "\n")
	d := NewDecoder()
	n := 0
	emit := func(Message) { n++ }
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		d.Feed(in, emit)
	}
	if n == 0 {
		b.Fatal("no message decoded")
	}
}

// BenchmarkDecodeManyTokens decodes a list of 2 Mi - 1 tokens (4 MiB), the most a message may
// hold. The reference's streamer handles the same input in about half a second.
func BenchmarkDecodeManyTokens(b *testing.B) {
	in := []byte("[" + strings.Repeat("1,", MaxTokenCount/2-2) + "1]")
	d := NewDecoder()
	emit := func(m Message) {
		if m.Err != nil {
			b.Fatal(m.Err.Desc)
		}
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		d.Feed(in, emit)
	}
}

// BenchmarkDecodeFileWrite decodes a guest-file-write request carrying 48 MiB of base64, fed
// in the 4 KiB reads qemu-ga makes.
func BenchmarkDecodeFileWrite(b *testing.B) {
	payload := base64.StdEncoding.EncodeToString(make([]byte, 36<<20))
	in := []byte(`{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"` + payload + `"}}` + "\n")
	d := NewDecoder()
	emit := func(m Message) {
		if m.Err != nil {
			b.Fatal(m.Err.Desc)
		}
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		for rest := in; len(rest) > 0; {
			n := min(4096, len(rest))
			d.Feed(rest[:n], emit)
			rest = rest[n:]
		}
	}
}

// BenchmarkEncodeFileRead encodes a guest-file-read reply with a 48 MiB base64 string, into a
// new buffer each time (as a transport that writes and drops it would) and into a reused one.
func BenchmarkEncodeFileRead(b *testing.B) {
	type fileRead struct {
		Count  int    `json:"count"`
		BufB64 string `json:"buf-b64"`
		EOF    bool   `json:"eof"`
	}
	payload := base64.StdEncoding.EncodeToString(make([]byte, 36<<20)) // 48 MiB of base64
	r := &Response{Return: fileRead{Count: 36 << 20, BufB64: payload}}
	b.Run("new-buffer", func(b *testing.B) {
		b.SetBytes(int64(len(payload)))
		b.ReportAllocs()
		for b.Loop() {
			_ = AppendResponse(nil, r)
		}
	})
	b.Run("reused-buffer", func(b *testing.B) {
		buf := AppendResponse(nil, r)
		b.SetBytes(int64(len(payload)))
		b.ReportAllocs()
		for b.Loop() {
			buf = AppendResponse(buf[:0], r)
		}
	})
}

func BenchmarkEncodePong(b *testing.B) {
	r := &Response{ID: int64(1), HasID: true}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendResponse(buf[:0], r)
	}
}
