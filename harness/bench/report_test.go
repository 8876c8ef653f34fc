package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func f(x float64) *float64 { return &x }
func i(x int64) *int64     { return &x }

// bench.json's top-level keys and per-agent keys are a contract with whoever reads the file.
func TestReportShape(t *testing.T) {
	r := &Report{
		ColdBootS: f(5), RestoreS: f(0.4), SuiteS: nil,
		Ours:      &AgentResult{PingMedianMs: f(1), PingP90Ms: f(2), FileReadMBps: f(30), RSSKB: i(100), FirstSyncMs: f(50)},
		Reference: &AgentResult{PingMedianMs: f(2), PingP90Ms: f(2), FileReadMBps: f(10), RSSKB: i(200), FirstSyncMs: f(25)},
	}
	r.Finish()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"cold_boot_s", "restore_s", "suite_s", "image", "machine", "ours", "reference", "ratios"} {
		if _, ok := top[k]; !ok {
			t.Errorf("bench.json lacks %q", k)
		}
	}
	if string(top["suite_s"]) != "null" {
		t.Errorf("a skipped suite is %s, want null", top["suite_s"])
	}
	var ours map[string]json.RawMessage
	if err := json.Unmarshal(top["ours"], &ours); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ping_median_ms", "ping_p90_ms", "file_read_mbps", "rss_kb", "first_sync_ms"} {
		if _, ok := ours[k]; !ok {
			t.Errorf("ours lacks %q", k)
		}
	}
	want := map[string]float64{"restore_vs_cold_boot": 0.08, "ping_median": 0.5, "ping_p90": 1, "file_read": 3, "rss": 0.5, "first_sync": 2}
	var ratios map[string]float64
	if err := json.Unmarshal(top["ratios"], &ratios); err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		if ratios[k] != v {
			t.Errorf("ratio %s = %v, want %v", k, ratios[k], v)
		}
	}
	met := map[string]bool{}
	for _, tg := range r.Targets {
		if tg.Met == nil {
			t.Errorf("target %s has no verdict", tg.Name)
			continue
		}
		met[tg.Name] = *tg.Met
	}
	if !met["restore_vs_cold_boot"] || !met["file_read ours/reference"] || met["first_sync ours/reference"] {
		t.Errorf("targets: %v", met)
	}
	var tab bytes.Buffer
	if err := r.WriteTable(&tab); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"ping median ms", "0.500", "file read MB/s", "3.00", "suite s", "skipped"} {
		if !strings.Contains(tab.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, tab.String())
		}
	}
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
pkg: github.com/qgakit/qgakit/agent/server
BenchmarkGuestPing-2     	  878190	      1371 ns/op	     288 B/op	       6 allocs/op
BenchmarkGuestFileRead/4096-2         	   71250	     16815 ns/op	 243.59 MB/s	   21560 B/op	      24 allocs/op
PASS
pkg: github.com/qgakit/qgakit/agent/commands
BenchmarkFileRead/48MiB-2   	       3	 402675117 ns/op	 124.99 MB/s
`
	got := ParseGoBench(strings.NewReader(out))
	if len(got) != 3 {
		t.Fatalf("parsed %d benchmarks: %+v", len(got), got)
	}
	if got[0].Package != "github.com/qgakit/qgakit/agent/server" || got[0].NsPerOp != 1371 || *got[0].AllocsPerOp != 6 || got[0].MBPerS != nil {
		t.Errorf("first: %+v", got[0])
	}
	if got[1].Name != "BenchmarkGuestFileRead/4096-2" || *got[1].MBPerS != 243.59 || *got[1].BytesPerOp != 21560 {
		t.Errorf("second: %+v", got[1])
	}
	if got[2].Package != "github.com/qgakit/qgakit/agent/commands" || got[2].Iterations != 3 || got[2].BytesPerOp != nil {
		t.Errorf("third: %+v", got[2])
	}
}
