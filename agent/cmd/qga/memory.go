package main

import (
	"os"
	"runtime/debug"
)

// memoryLimit is the agent's soft memory limit (runtime/debug.SetMemoryLimit).
//
// The agent's live heap is a few MiB, except while one large message (up to 64 MiB of JSON) or
// one large reply (a 48 MiB guest-file-read is 64 MiB of base64) is in flight. Go's default
// pacing lets the heap grow to twice what is live before it collects, and hands freed memory
// back to the kernel slowly, so a guest paid for every large message several times over: one
// 48 MiB read left the agent at 366 MB resident, and 256 MiB of garbage took it to 203 MB.
// Above the limit the collector runs at each large allocation instead and returns what it
// frees at once, so the peak stays near what is really live (about 85 MB for the garbage, see
// agent/hosttier's TestGarbageMemory). Below it, which is nearly always, nothing changes.
const memoryLimit = 48 << 20

func init() {
	// A GOMEMLIMIT in the environment is the administrator's choice; the runtime has applied it.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
}
