package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/qgakit/qgakit/agent/commands"
	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/agent/state"
	"github.com/qgakit/qgakit/schema"
)

// realAgent is the dispatcher with every command registered, on a temporary state directory.
func realAgent(b *testing.B) *dispatch.Dispatcher {
	b.Helper()
	st, err := state.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	d := dispatch.New(schema.MustLoad(), dispatch.Options{Frozen: st.Frozen})
	commands.Register(d, &commands.Env{State: st, Version: "bench", Info: d.Info})
	return d
}

// roundTrip is the server's per-message work without the channel: decode, dispatch, encode.
type roundTrip struct {
	dec   *protocol.Decoder
	d     *dispatch.Dispatcher
	out   []byte
	last  protocol.Response
	emitF func(protocol.Message)
}

func newRoundTrip(d *dispatch.Dispatcher) *roundTrip {
	rt := &roundTrip{dec: protocol.NewDecoder(), d: d}
	rt.emitF = func(m protocol.Message) {
		resp, reply := rt.d.Dispatch(context.Background(), m)
		if reply {
			rt.out = protocol.AppendResponse(rt.out[:0], &resp)
			rt.last = resp
			// As the server does once a reply is written; rt.last keeps only small values.
			if r, ok := resp.Return.(protocol.Releaser); ok {
				r.Release()
			}
		}
	}
	return rt
}

func (rt *roundTrip) do(req []byte) { rt.dec.Feed(req, rt.emitF) }

func BenchmarkGuestPing(b *testing.B) {
	rt := newRoundTrip(realAgent(b))
	req := []byte(`{"execute":"guest-ping"}`)
	rt.do(req)
	if string(rt.out) != "{\"return\": {}}\n" {
		b.Fatalf("reply %q", rt.out)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rt.do(req)
	}
}

func BenchmarkGuestFileRead(b *testing.B) {
	for _, size := range []int{4096, 1 << 20} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			rt := newRoundTrip(realAgent(b))
			path := filepath.Join(b.TempDir(), "data")
			if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
				b.Fatal(err)
			}
			rt.do([]byte(fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q}}`, path)))
			if rt.last.Err != nil {
				b.Fatalf("open: %v", rt.last.Err)
			}
			h := rt.last.Return
			read := []byte(fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%v,"count":%d}}`, h, size))
			rewind := []byte(fmt.Sprintf(`{"execute":"guest-file-seek","arguments":{"handle":%v,"offset":0,"whence":"set"}}`, h))
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				rt.do(read)
				if rt.last.Err != nil {
					b.Fatalf("read: %v", rt.last.Err)
				}
				b.StopTimer()
				rt.do(rewind)
				b.StartTimer()
			}
		})
	}
}
