package commands

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/qgakit/qgakit/agent/protocol"
)

// BenchmarkFileRead reports the cost of guest-file-read through the dispatcher, for the
// default 4 KiB and for the 48 MiB maximum (a host copying a file out of the guest).
func BenchmarkFileRead(b *testing.B) {
	for _, size := range []int{defaultReadCount, 1 << 20, maxReadCount} {
		b.Run(byteSize(size), func(b *testing.B) {
			a := newFTAgent(b)
			path := filepath.Join(b.TempDir(), "data")
			data := make([]byte, size)
			rand.New(rand.NewSource(1)).Read(data)
			if err := os.WriteFile(path, data, 0o644); err != nil {
				b.Fatal(err)
			}
			h := a.open(b, path, "r")
			seek := protocol.Message{Value: map[string]any{"execute": "guest-file-seek",
				"arguments": map[string]any{"handle": h, "offset": int64(0), "whence": "set"}}}
			read := protocol.Message{Value: map[string]any{"execute": "guest-file-read",
				"arguments": map[string]any{"handle": h, "count": int64(size)}}}
			ctx := context.Background()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a.d.Dispatch(ctx, seek)
				resp, _ := a.d.Dispatch(ctx, read)
				r, ok := resp.Return.(fileRead)
				if !ok || r.Count != int64(size) {
					b.Fatalf("read: %+v", resp)
				}
				r.Release() // as the server does once the reply is written
			}
		})
	}
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20:
		return itoa64(int64(n>>20)) + "MiB"
	case n >= 1<<10:
		return itoa64(int64(n>>10)) + "KiB"
	}
	return itoa64(int64(n)) + "B"
}
