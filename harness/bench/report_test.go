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

// debian_cloud sits beside the tiny numbers without changing them, and says why it is empty
// when the image was not there.
func TestReportDebianCloud(t *testing.T) {
	r := &Report{
		ColdBootS: f(5), RestoreS: f(0.5),
		DebianCloud: &CloudResults{
			Measured: true, ColdBootS: f(40), RestoreS: f(2), ColdBoots: 3, Restores: 5,
			Image:     Image{Profile: "debian-cloud", KernelVersion: "6.1.0-56-cloud-amd64", MemoryMiB: 512, VCPUs: 2, CPU: "qemu64"},
			Ours:      &AgentResult{PingMedianMs: f(1), FileReadMBps: f(40), RSSKB: i(100), FirstSyncMs: f(30)},
			Reference: &AgentResult{PingMedianMs: f(4), FileReadMBps: f(10), RSSKB: i(400), FirstSyncMs: f(60)},
		},
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
	if string(top["cold_boot_s"]) != "5" || string(top["restore_s"]) != "0.5" {
		t.Errorf("top level cold_boot_s %s, restore_s %s: want tiny's 5 and 0.5", top["cold_boot_s"], top["restore_s"])
	}
	var cloud map[string]json.RawMessage
	if err := json.Unmarshal(top["debian_cloud"], &cloud); err != nil {
		t.Fatalf("debian_cloud: %v in %s", err, b)
	}
	for _, k := range []string{"measured", "cold_boot_s", "restore_s", "image", "ours", "reference", "ratios", "samples"} {
		if _, ok := cloud[k]; !ok {
			t.Errorf("debian_cloud lacks %q", k)
		}
	}
	var ratios map[string]float64
	if err := json.Unmarshal(cloud["ratios"], &ratios); err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"restore_vs_cold_boot": 0.05, "ping_median": 0.25, "file_read": 4, "rss": 0.25, "first_sync": 0.5}
	for k, v := range want {
		if ratios[k] != v {
			t.Errorf("debian_cloud ratio %s = %v, want %v", k, ratios[k], v)
		}
	}
	if r.Ratios.RestoreVsColdBoot == nil || *r.Ratios.RestoreVsColdBoot != 0.1 {
		t.Errorf("top-level restore_vs_cold_boot %v, want tiny's 0.1", fmtNum(r.Ratios.RestoreVsColdBoot))
	}
	var tab bytes.Buffer
	if err := r.WriteTable(&tab); err != nil {
		t.Fatal(err)
	}
	cloudAt := strings.Index(tab.String(), "debian-cloud guest (kernel 6.1.0-56-cloud-amd64, 512 MiB, 2 vCPUs, cpu qemu64")
	if cloudAt < 0 || cloudAt < strings.Index(tab.String(), "machine") {
		t.Fatalf("no debian-cloud block after the tiny one:\n%s", tab.String())
	}
	for _, s := range []string{"cold boot s (median of 3)", "40.00", "restore s (median of 5)", "0.050", "4.00"} {
		if !strings.Contains(tab.String()[cloudAt:], s) {
			t.Errorf("debian-cloud block lacks %q:\n%s", s, tab.String()[cloudAt:])
		}
	}

	r.DebianCloud = &CloudResults{Skipped: "not cached (make e2e IMAGE=debian-cloud builds it)"}
	r.Finish()
	b, err = json.Marshal(r.DebianCloud)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"measured":false`) || !strings.Contains(string(b), `"cold_boot_s":null`) {
		t.Errorf("a skipped debian_cloud: %s", b)
	}
	tab.Reset()
	if err := r.WriteTable(&tab); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tab.String(), "\ndebian-cloud: not cached (make e2e IMAGE=debian-cloud builds it)\n") {
		t.Errorf("table of a skipped debian-cloud:\n%s", tab.String())
	}
}
