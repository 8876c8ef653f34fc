package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// agentBinaries are the agents the host benchmark runs against: the reference qemu-ga and ours
// ($QGA_BIN, which `make test` sets, else bin/qga of this checkout).
func agentBinaries(t *testing.T) map[string]string {
	t.Helper()
	ours := os.Getenv("QGA_BIN")
	if ours == "" {
		ours, _ = filepath.Abs("../../bin/qga")
	}
	bins := map[string]string{"ours": ours, "reference": "/usr/sbin/qemu-ga"}
	for name, b := range bins {
		if _, err := os.Stat(b); err != nil {
			t.Skipf("%s agent %s: %v (make agent; apt-get install qemu-guest-agent)", name, b, err)
		}
	}
	return bins
}

// The host benchmark on both real agents, with few samples: every number must be there, and the
// file read verified the bytes (FileRead fails otherwise).
func TestHostBench(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for name, bin := range agentBinaries(t) {
		t.Run(name, func(t *testing.T) {
			res, err := HostBench(ctx, bin, AgentOptions{Pings: 20, FileReads: 1, FirstSyncs: 2})
			if err != nil {
				t.Fatal(err)
			}
			if res.Version == "" || res.PingCount != 20 || res.PingMedianMs == nil || res.PingP90Ms == nil ||
				res.FileReadMBps == nil || res.RSSKB == nil || res.HWMKB == nil || res.FirstSyncMs == nil {
				t.Errorf("missing numbers: %+v", res)
			}
			if *res.PingP90Ms < *res.PingMedianMs || *res.HWMKB < *res.RSSKB {
				t.Errorf("p90 below the median or HWM below RSS: %+v", res)
			}
			t.Logf("%s %s: ping %.3f/%.3f ms, read %.1f MB/s, rss %d kB, hwm %d kB, first sync %.2f ms",
				name, res.Version, *res.PingMedianMs, *res.PingP90Ms, *res.FileReadMBps, *res.RSSKB, *res.HWMKB, *res.FirstSyncMs)
		})
	}
}

// The host's /proc/<pid>/status and the guest's grep of it go through one parser.
func TestParseProcMemory(t *testing.T) {
	status := "Name:\tqga\nVmPeak:\t  9000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t    1234 kB\nThreads:\t3\nVmSwap: x kB\n"
	if rss, hwm := parseProcMemory(status); rss != 1234 || hwm != 4321 {
		t.Errorf("rss %d, hwm %d; want 1234 and 4321", rss, hwm)
	}
	if rss, hwm := parseProcMemory("VmRSS: 12 MB\nVmHWM:\n"); rss != 0 || hwm != 0 {
		t.Errorf("rss %d, hwm %d from lines without a kB value; want 0 and 0", rss, hwm)
	}
	// Our own process has both.
	if rss, hwm, err := procMemory(os.Getpid()); err != nil || rss <= 0 || hwm < rss {
		t.Errorf("procMemory(self) = %d, %d, %v", rss, hwm, err)
	}
}
