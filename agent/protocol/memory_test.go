package protocol

import (
	"bytes"
	"runtime"
	"testing"
)

// A 64 MiB string, the largest token there is, arriving in the 4 KiB reads of the server,
// must not cost much more than its own size in allocations: the token buffer doubled up to
// 64 MiB used to allocate 128 MiB along the way and hold 96 MiB at once, which the garbage
// corpus of agent/hosttier (TestGarbageMemory) showed as resident memory.
func TestLargestTokenAllocatesItsSizeOnce(t *testing.T) {
	in := append(append([]byte(`{"execute":"guest-ping","id":"`), bytes.Repeat([]byte("x"), MaxTokenSize)...), `"}`+"\n"...)
	var got []Message
	emit := func(m Message) { got = append(got, m) }
	d := NewDecoder()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for rest := in; len(rest) > 0; {
		n := min(4096, len(rest))
		d.Feed(rest[:n], emit)
		rest = rest[n:]
	}
	runtime.ReadMemStats(&after)
	if len(got) == 0 || got[0].Err == nil || got[0].Err.Desc != "JSON token size limit exceeded" {
		t.Fatalf("messages %+v, want the token size limit first", got)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d MiB allocated for a %d MiB token", allocated>>20, MaxTokenSize>>20)
	if limit := uint64(MaxTokenSize + MaxTokenSize/4); allocated > limit {
		t.Fatalf("%d MiB allocated, want at most %d MiB", allocated>>20, limit>>20)
	}
}
