// Package bench measures what `make bench` reports in _artifacts/bench.json: how long a VM takes
// to get to an answering agent by cold boot and by snapshot restore, how long the whole
// conformance suite takes, and, for our agent (bin/qga) against the reference qemu-ga in the
// same VM shape and the same run, the guest-ping round trip over virtio-serial, guest-file-read
// throughput, the agent's memory, and the time from exec to its first answered sync. The same
// agent numbers are also taken on the host (unix-listen), where they are far less noisy.
//
// Benchmarks report; they assert nothing about time. What they do check is that a measurement
// measured the right thing: a file read whose bytes do not hash to what the guest wrote, or a
// sync answered with the wrong id, is an error, not a number.
package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// Report is bench.json.
type Report struct {
	// ColdBootS is the median time from QEMU's start to the agent answering a sync, booting.
	ColdBootS *float64 `json:"cold_boot_s"`
	// RestoreS is the same from a saved snapshot (Template.Restore with the agent attached).
	RestoreS *float64 `json:"restore_s"`
	// SuiteS is the wall time of `make e2e` with the defaults, nil when it was skipped.
	SuiteS *float64 `json:"suite_s"`
	// Suite says how the suite run went.
	Suite SuiteRun `json:"suite"`
	// Image is the guest the VM numbers were taken in.
	Image Image `json:"image"`
	// Machine is the host they were taken on.
	Machine Machine `json:"machine"`
	// Ours and Reference are the in-guest numbers of bin/qga and /usr/sbin/qemu-ga.
	Ours      *AgentResult `json:"ours"`
	Reference *AgentResult `json:"reference"`
	// Ratios are restore/cold boot and, for each agent number, ours/reference.
	Ratios Ratios `json:"ratios"`
	// Targets are the project's goals for these numbers and whether this run met them.
	Targets []Target `json:"targets"`
	// Samples are the raw measurements behind the medians.
	Samples Samples `json:"samples"`
	// Host has the agent numbers over a unix socket on the host, without a VM in the way.
	Host *HostResults `json:"host,omitempty"`
	// DebianCloud has the VM numbers again in the debian-cloud guest (systemd, cloud-init),
	// or why they were not taken; nil when the VM benchmarks did not run.
	DebianCloud *CloudResults `json:"debian_cloud,omitempty"`
	// GoBench are the `go test -bench` results of the agent's packages (in-process, ours only).
	GoBench []GoBench `json:"go_bench,omitempty"`
	// Notes explain how to read the numbers.
	Notes []string `json:"notes"`
	// Errors are measurements that failed; their numbers are missing (null).
	Errors []string `json:"errors,omitempty"`
}

// SuiteRun is the outcome of the `make e2e` run.
type SuiteRun struct {
	Ran      bool   `json:"ran"`
	Command  string `json:"command,omitempty"`
	ExitCode int    `json:"exit_code"`
	Log      string `json:"log,omitempty"`
}

// Image describes the VM shape every VM number was taken in.
type Image struct {
	Profile       string `json:"profile"`
	KernelVersion string `json:"kernel_version"`
	MemoryMiB     int    `json:"memory_mib"`
	VCPUs         int    `json:"vcpus"`
	// CPU is QEMU's -cpu model, when the profile chooses one.
	CPU string `json:"cpu,omitempty"`
	// StateMB is the size of the snapshot's state file.
	StateMB *float64 `json:"state_mb"`
	// SaveS is how long stop + migrate to the state file took.
	SaveS *float64 `json:"save_s"`
}

// Machine describes the host.
type Machine struct {
	Cores  int    `json:"cores"`
	KVM    bool   `json:"kvm"`
	Date   string `json:"date"`
	QEMU   string `json:"qemu"`
	Kernel string `json:"kernel"`
	// LoadAvg is /proc/loadavg's 1-minute load when the run started and when it ended: other
	// VMs on the same cores make every number here slower.
	LoadAvgStart *float64 `json:"load_avg_start"`
	LoadAvgEnd   *float64 `json:"load_avg_end"`
}

// AgentResult is one agent's numbers.
type AgentResult struct {
	Binary  string `json:"binary"`
	Version string `json:"version"`
	// PingMedianMs and PingP90Ms are guest-ping round trips as the harness's client sees them.
	PingMedianMs *float64 `json:"ping_median_ms"`
	PingP90Ms    *float64 `json:"ping_p90_ms"`
	PingCount    int      `json:"ping_count"`
	// FileReadMBps is the median throughput (10^6 bytes per second) of reading the 64 MiB file
	// with guest-file-open, guest-file-read of 48 MiB until eof, and guest-file-close.
	FileReadMBps *float64 `json:"file_read_mbps"`
	// RSSKB and HWMKB are VmRSS and VmHWM of the agent's process after the file reads.
	RSSKB *int64 `json:"rss_kb"`
	HWMKB *int64 `json:"hwm_kb"`
	// FirstSyncMs is the median time from the agent's exec to its first answered sync.
	FirstSyncMs *float64 `json:"first_sync_ms"`
}

// Ratios are quotients of the numbers above; nil when a side is missing.
type Ratios struct {
	RestoreVsColdBoot *float64 `json:"restore_vs_cold_boot"`
	PingMedian        *float64 `json:"ping_median"`
	PingP90           *float64 `json:"ping_p90"`
	FileRead          *float64 `json:"file_read"`
	RSS               *float64 `json:"rss"`
	FirstSync         *float64 `json:"first_sync"`
}

// Target is one goal: Value compared with Goal by Op ("<=" or ">=").
type Target struct {
	Name  string   `json:"name"`
	Op    string   `json:"op"`
	Goal  float64  `json:"goal"`
	Value *float64 `json:"value"`
	// Met is nil when the value is missing.
	Met *bool `json:"met"`
}

// Samples are the raw measurements.
type Samples struct {
	ColdBootS           []float64 `json:"cold_boot_s"`
	RestoreS            []float64 `json:"restore_s"`
	OursFileReadMBps    []float64 `json:"ours_file_read_mbps"`
	RefFileReadMBps     []float64 `json:"reference_file_read_mbps"`
	OursFirstSyncMs     []float64 `json:"ours_first_sync_ms"`
	RefFirstSyncMs      []float64 `json:"reference_first_sync_ms"`
	OursPingMsQuartiles []float64 `json:"ours_ping_ms_min_q1_q2_q3_max"`
	RefPingMsQuartiles  []float64 `json:"reference_ping_ms_min_q1_q2_q3_max"`
}

// CloudResults are the VM numbers of the debian-cloud guest: the same measurements as the
// tiny guest's at the top level, in a guest that boots like a real system.
type CloudResults struct {
	// Measured is false when the image was not in the cache (bench never builds it) or the
	// measurements were switched off; Skipped then says which.
	Measured bool   `json:"measured"`
	Skipped  string `json:"skipped,omitempty"`
	// ImageDir is the image's cache directory.
	ImageDir string `json:"image_dir,omitempty"`
	// ColdBootS and RestoreS are medians of ColdBoots and Restores, as at the top level.
	ColdBootS *float64 `json:"cold_boot_s"`
	RestoreS  *float64 `json:"restore_s"`
	ColdBoots int      `json:"cold_boots"`
	Restores  int      `json:"restores"`
	Image     Image    `json:"image"`
	// Ours is bin/qga injected through the NoCloud seed; Reference is the qemu-ga the image
	// itself carries (AGENT=image).
	Ours      *AgentResult `json:"ours"`
	Reference *AgentResult `json:"reference"`
	Ratios    Ratios       `json:"ratios"`
	Samples   Samples      `json:"samples"`
}

// HostResults are the agents' numbers over a unix socket on the host.
type HostResults struct {
	Ours      *AgentResult `json:"ours"`
	Reference *AgentResult `json:"reference"`
	Ratios    Ratios       `json:"ratios"`
}

// GoBench is one line of `go test -bench` output.
type GoBench struct {
	Package     string   `json:"package"`
	Name        string   `json:"name"`
	Iterations  int64    `json:"iterations"`
	NsPerOp     float64  `json:"ns_per_op"`
	MBPerS      *float64 `json:"mb_per_s,omitempty"`
	BytesPerOp  *float64 `json:"bytes_per_op,omitempty"`
	AllocsPerOp *float64 `json:"allocs_per_op,omitempty"`
}

// AgentRatios is ours/reference for each agent number.
func AgentRatios(ours, ref *AgentResult) Ratios {
	if ours == nil || ref == nil {
		return Ratios{}
	}
	return Ratios{
		PingMedian: Ratio(ours.PingMedianMs, ref.PingMedianMs),
		PingP90:    Ratio(ours.PingP90Ms, ref.PingP90Ms),
		FileRead:   Ratio(ours.FileReadMBps, ref.FileReadMBps),
		RSS:        Ratio(intFloat(ours.RSSKB), intFloat(ref.RSSKB)),
		FirstSync:  Ratio(ours.FirstSyncMs, ref.FirstSyncMs),
	}
}

func intFloat(p *int64) *float64 {
	if p == nil {
		return nil
	}
	f := float64(*p)
	return &f
}

// Finish computes the ratios and the targets from the numbers.
func (r *Report) Finish() {
	agent := AgentRatios(r.Ours, r.Reference)
	agent.RestoreVsColdBoot = Ratio(r.RestoreS, r.ColdBootS)
	r.Ratios = agent
	if r.Host != nil {
		r.Host.Ratios = AgentRatios(r.Host.Ours, r.Host.Reference)
	}
	if c := r.DebianCloud; c != nil {
		c.Ratios = AgentRatios(c.Ours, c.Reference)
		c.Ratios.RestoreVsColdBoot = Ratio(c.RestoreS, c.ColdBootS)
	}
	r.Targets = []Target{
		target("restore_vs_cold_boot", "<=", 0.1, r.Ratios.RestoreVsColdBoot),
		target("ping_median ours/reference", "<=", 1.0, r.Ratios.PingMedian),
		target("file_read ours/reference", ">=", 1.5, r.Ratios.FileRead),
		target("rss ours/reference", "<=", 1.0, r.Ratios.RSS),
		target("first_sync ours/reference", "<=", 1.0, r.Ratios.FirstSync),
	}
}

func target(name, op string, goal float64, v *float64) Target {
	t := Target{Name: name, Op: op, Goal: goal, Value: v}
	if v != nil {
		met := *v <= goal
		if op == ">=" {
			met = *v >= goal
		}
		t.Met = &met
	}
	return t
}

// WriteTable prints the report as the table `make bench` shows: the tiny guest's and the
// host's numbers, then the debian-cloud guest's as a block of its own.
func (r *Report) WriteTable(w io.Writer) error {
	err := table(w, func(row func(...string)) {
		row("", "ours", "reference", "ours/ref", "goal")
		agentRows(row, "VM ", r.Ours, r.Reference, r.Ratios)
		if r.Host != nil {
			agentRows(row, "host ", r.Host.Ours, r.Host.Reference, r.Host.Ratios)
		}
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	err = table(w, func(row func(...string)) {
		row("cold boot s (median)", fmtNum(r.ColdBootS), "")
		row("restore s (median)", fmtNum(r.RestoreS), "")
		row("restore/cold boot", fmtNum(r.Ratios.RestoreVsColdBoot), "goal <= 0.1")
		row("suite s", fmtNum(r.SuiteS), suiteNote(r.Suite))
		row("machine", fmt.Sprintf("%d cores, kvm=%v, load %s -> %s", r.Machine.Cores, r.Machine.KVM,
			fmtNum(r.Machine.LoadAvgStart), fmtNum(r.Machine.LoadAvgEnd)), r.Machine.Date)
	})
	if err != nil {
		return err
	}
	if r.DebianCloud != nil {
		fmt.Fprintln(w)
		if err := r.DebianCloud.writeTable(w); err != nil {
			return err
		}
	}
	for _, e := range r.Errors {
		fmt.Fprintln(w, "error:", e)
	}
	return nil
}

// writeTable prints the debian-cloud block, or the line that says why there is none.
func (c *CloudResults) writeTable(w io.Writer) error {
	if !c.Measured {
		_, err := fmt.Fprintf(w, "debian-cloud: %s\n", c.Skipped)
		return err
	}
	im := c.Image
	fmt.Fprintf(w, "debian-cloud guest (kernel %s, %d MiB, %d vCPUs, cpu %s; reference: the image's own qemu-ga)\n",
		orDash(im.KernelVersion), im.MemoryMiB, im.VCPUs, orDash(im.CPU))
	err := table(w, func(row func(...string)) {
		row("", "ours", "reference", "ours/ref", "goal")
		agentRows(row, "VM ", c.Ours, c.Reference, c.Ratios)
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	return table(w, func(row func(...string)) {
		row(fmt.Sprintf("cold boot s (median of %d)", c.ColdBoots), fmtNum(c.ColdBootS), "")
		row(fmt.Sprintf("restore s (median of %d)", c.Restores), fmtNum(c.RestoreS), "")
		row("restore/cold boot", fmtNum(c.Ratios.RestoreVsColdBoot), "goal <= 0.1")
	})
}

// table prints the rows that rows writes as one right-aligned table.
func table(w io.Writer, rows func(row func(cells ...string))) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	rows(func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t") })
	return tw.Flush()
}

// agentRows prints one row per agent number: ours, the reference's, their ratio and its goal.
func agentRows(row func(...string), prefix string, o, ref *AgentResult, ra Ratios) {
	get := func(a *AgentResult, f func(*AgentResult) string) string {
		if a == nil {
			return "-"
		}
		return f(a)
	}
	row(prefix+"ping median ms", get(o, func(a *AgentResult) string { return fmtNum(a.PingMedianMs) }),
		get(ref, func(a *AgentResult) string { return fmtNum(a.PingMedianMs) }), fmtNum(ra.PingMedian), "<= 1.0")
	row(prefix+"ping p90 ms", get(o, func(a *AgentResult) string { return fmtNum(a.PingP90Ms) }),
		get(ref, func(a *AgentResult) string { return fmtNum(a.PingP90Ms) }), fmtNum(ra.PingP90), "")
	row(prefix+"file read MB/s", get(o, func(a *AgentResult) string { return fmtNum(a.FileReadMBps) }),
		get(ref, func(a *AgentResult) string { return fmtNum(a.FileReadMBps) }), fmtNum(ra.FileRead), ">= 1.5")
	row(prefix+"RSS kB", get(o, func(a *AgentResult) string { return fmtInt(a.RSSKB) }),
		get(ref, func(a *AgentResult) string { return fmtInt(a.RSSKB) }), fmtNum(ra.RSS), "<= 1.0")
	row(prefix+"HWM kB", get(o, func(a *AgentResult) string { return fmtInt(a.HWMKB) }),
		get(ref, func(a *AgentResult) string { return fmtInt(a.HWMKB) }), "", "")
	row(prefix+"first sync ms", get(o, func(a *AgentResult) string { return fmtNum(a.FirstSyncMs) }),
		get(ref, func(a *AgentResult) string { return fmtNum(a.FirstSyncMs) }), fmtNum(ra.FirstSync), "<= 1.0")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func suiteNote(s SuiteRun) string {
	switch {
	case !s.Ran:
		return "skipped"
	case s.ExitCode != 0:
		return fmt.Sprintf("exit %d, see %s", s.ExitCode, s.Log)
	}
	return "passed"
}

func fmtNum(p *float64) string {
	if p == nil {
		return "-"
	}
	switch a := math.Abs(*p); {
	case a >= 100:
		return fmt.Sprintf("%.0f", *p)
	case a >= 1:
		return fmt.Sprintf("%.2f", *p)
	}
	return fmt.Sprintf("%.3f", *p)
}

func fmtInt(p *int64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}
