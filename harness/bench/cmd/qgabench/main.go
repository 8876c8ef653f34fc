// Command qgabench is `make bench`: it measures cold boot against snapshot restore, the suite's
// wall time, and our agent against the reference in the same VM shape and the same run, on the
// tiny image and, when its image is in the cache, on debian-cloud, then writes bench.json and
// prints a table. It reports; it asserts nothing about time. It exits 1
// when a measurement failed (the report is still written, with that number null and the error
// listed).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/harness/bench"
	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

type options struct {
	ours, reference string
	out, vmLog      string
	repo            string
	n               int
	agent           bench.AgentOptions
	suite           bool
	suiteArgs       string
	host, vms       bool
	goBench         bool
	benchtime       string
	memMiB, vcpus   int
	timeout         time.Duration
	cloud           string
	cloudN          int
}

// Values of -cloud.
const (
	cloudAuto = "auto"
	cloudOn   = "on"
	cloudOff  = "off"
)

// cloudNotCached is what the report says when the image is not there to measure.
const cloudNotCached = "not cached (make e2e IMAGE=debian-cloud builds it)"

func main() {
	var o options
	flag.StringVar(&o.ours, "ours", "bin/qga", "our agent binary")
	flag.StringVar(&o.reference, "reference", "/usr/sbin/qemu-ga", "the reference agent binary, on tiny and the host (on debian-cloud the reference is the image's own qemu-ga)")
	flag.StringVar(&o.out, "out", "_artifacts/bench.json", "where to write the report")
	flag.StringVar(&o.vmLog, "vm-log", "", "the VMs' log (QEMU command lines, serial lines); default bench-vm.log beside -out")
	flag.StringVar(&o.repo, "repo", ".", "the repository, for `make e2e` and `go test -bench`")
	flag.IntVar(&o.n, "n", 5, "cold boots and restores to take the median of")
	flag.IntVar(&o.agent.Pings, "pings", 1000, "guest-ping round trips per agent")
	flag.IntVar(&o.agent.FileReads, "reads", 3, "64 MiB file reads per agent")
	flag.IntVar(&o.agent.FirstSyncs, "syncs", 5, "agent starts (exec to first answered sync) per agent")
	flag.BoolVar(&o.suite, "suite", true, "run `make e2e` for suite_s (long)")
	flag.StringVar(&o.suiteArgs, "suite-args", "", "extra `make e2e` arguments, e.g. PROCS=2")
	flag.BoolVar(&o.host, "host", true, "also compare the agents on the host over a unix socket")
	flag.BoolVar(&o.vms, "vm", true, "run the VM benchmarks")
	flag.BoolVar(&o.goBench, "gobench", true, "include the agent packages' `go test -bench` results")
	flag.StringVar(&o.benchtime, "benchtime", "1s", "-benchtime for -gobench")
	flag.IntVar(&o.memMiB, "mem", 0, "guest memory in MiB (0: the harness's default, as the suite uses)")
	flag.IntVar(&o.vcpus, "smp", 0, "guest vCPUs (0: the harness's default)")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Hour, "bound for the whole run")
	flag.StringVar(&o.cloud, "cloud", cloudAuto, "measure the debian-cloud guest too: auto (when the image is in the cache; "+
		"it is never built here), on (fail when it is not), off")
	flag.IntVar(&o.cloudN, "cloud-n", 3, "debian-cloud cold boots to take the median of (fewer than -n: each takes "+
		"30 s to minutes under TCG); its restores are -n")
	flag.Parse()
	if o.cloud != cloudAuto && o.cloud != cloudOn && o.cloud != cloudOff {
		fmt.Fprintf(os.Stderr, "qgabench: -cloud=%s: want auto, on or off\n", o.cloud)
		os.Exit(2)
	}
	if o.vmLog == "" {
		o.vmLog = filepath.Join(filepath.Dir(o.out), "bench-vm.log")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	r, err := run(ctx, o)
	if r != nil {
		if werr := write(o.out, r); werr != nil {
			fmt.Fprintln(os.Stderr, "qgabench:", werr)
			os.Exit(1)
		}
		fmt.Println()
		_ = r.WriteTable(os.Stdout)
		fmt.Printf("\nwrote %s\n", o.out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "qgabench:", err)
		os.Exit(1)
	}
}

func progressf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

// run measures everything it can; a failed part leaves its numbers null and its error in the
// report, and the others still run.
func run(ctx context.Context, o options) (*bench.Report, error) {
	for _, p := range []*string{&o.ours, &o.reference} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("agent binary: %w", err)
		}
		*p = abs
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return nil, err
	}
	r := &bench.Report{
		Image:   bench.Image{Profile: "tiny"},
		Machine: bench.Machine{Cores: runtime.NumCPU(), Date: time.Now().UTC().Format(time.RFC3339), Kernel: uname()},
	}
	r.Machine.LoadAvgStart = loadAvg()
	fail := func(what string, err error) {
		msg := fmt.Sprintf("%s: %v", what, err)
		r.Errors = append(r.Errors, msg)
		progressf("FAILED %s", msg)
	}

	if o.host {
		progressf("host: both agents over a unix socket")
		r.Host = &bench.HostResults{}
		var err error
		if r.Host.Ours, err = bench.HostBench(ctx, o.ours, o.agent); err != nil {
			fail("host ours", err)
		}
		if r.Host.Reference, err = bench.HostBench(ctx, o.reference, o.agent); err != nil {
			fail("host reference", err)
		}
	}
	if o.goBench && ctx.Err() == nil {
		progressf("go test -bench of the agent's packages")
		var err error
		r.GoBench, err = bench.RunGoBench(ctx, o.repo, o.benchtime, "./agent/server", "./agent/commands", "./agent/protocol")
		if err != nil {
			fail("go test -bench", err)
		}
	}
	if o.vms && ctx.Err() == nil {
		if err := runVMs(ctx, o, r, fail); err != nil {
			fail("VM benchmarks", err)
		}
	}
	if o.vms && ctx.Err() == nil {
		r.DebianCloud = &bench.CloudResults{}
		if err := runCloud(ctx, o, r.DebianCloud, fail); err != nil {
			fail("debian-cloud VM benchmarks", err)
		}
	}
	if o.suite && ctx.Err() == nil {
		progressf("the suite: make e2e %s (this takes a while; -suite=false skips it)", o.suiteArgs)
		// Its reports go to a dir of their own, so that a `make e2e` someone runs meanwhile
		// does not mix its files with these.
		outDir, err := filepath.Abs(filepath.Dir(o.out))
		if err != nil {
			return r, err
		}
		args := append([]string{"ARTIFACTS=" + filepath.Join(outDir, "bench-suite")}, strings.Fields(o.suiteArgs)...)
		d, run, err := bench.RunSuite(ctx, o.repo, filepath.Join(outDir, "bench-suite.log"), args...)
		r.Suite = run
		if err != nil {
			fail("suite", err)
		} else {
			r.SuiteS = bench.Num(d.Seconds(), 1)
			progressf("suite: %.0fs, exit %d", d.Seconds(), run.ExitCode)
		}
	}
	r.Machine.LoadAvgEnd = loadAvg()
	r.Notes = notes(o)
	r.Finish()
	if ctx.Err() != nil {
		return r, fmt.Errorf("interrupted: %w", context.Cause(ctx))
	}
	if len(r.Errors) > 0 {
		return r, errors.New(strconv.Itoa(len(r.Errors)) + " measurement(s) failed")
	}
	return r, nil
}

// runVMs takes the VM numbers: cold boots, snapshot restores, and the agents side by side.
func runVMs(ctx context.Context, o options, r *bench.Report, fail func(string, error)) error {
	logf, err := os.Create(o.vmLog)
	if err != nil {
		return err
	}
	defer logf.Close()
	defer vm.CloseAll()
	progressf("tiny image (built into the cache on first use); VM logs in %s", o.vmLog)
	tiny, err := image.BuildTiny(ctx, logf)
	if err != nil {
		return err
	}
	r.Image.KernelVersion = tiny.KernelVersion
	work, err := os.MkdirTemp("", "qgabench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	b, err := bench.NewVMBench(ctx, bench.VMConfig{
		Tiny: tiny, Ours: o.ours, Reference: o.reference, MemoryMiB: o.memMiB, VCPUs: o.vcpus,
		WorkDir: work, Log: logf, Progress: os.Stderr,
	})
	if err != nil {
		return err
	}

	c := bench.CloudResults{Image: r.Image}
	err = measure(ctx, b, o, o.n, "", &c, &r.Machine, fail)
	r.ColdBootS, r.RestoreS, r.Image, r.Samples = c.ColdBootS, c.RestoreS, c.Image, c.Samples
	r.Ours, r.Reference = c.Ours, c.Reference
	return err
}

// measure takes one guest's VM numbers into c: cold boots, snapshot restores, and the agents
// side by side. The machine facts the last cold boot knows go to m. label prefixes the
// progress lines and the names of failed measurements.
func measure(ctx context.Context, b *bench.VMBench, o options, coldN int, label string, c *bench.CloudResults, m *bench.Machine, fail func(string, error)) error {
	progressf("%scold boots x%d (QEMU start to the agent answering)", label, coldN)
	cold, last, err := b.ColdBoots(ctx, coldN)
	c.ColdBoots = len(cold)
	c.Samples.ColdBootS = round(bench.Seconds(cold))
	if len(cold) > 0 {
		c.ColdBootS = bench.Num(bench.Median(bench.Seconds(cold)), 3)
	}
	if err != nil {
		fail(label+"cold boot", err)
	}
	if last != nil {
		describe(ctx, last, m, &c.Image)
		last.Close()
	}

	progressf("%ssnapshots: one per agent", label)
	ours, err := b.Template(ctx, bench.Ours)
	if err != nil {
		return err
	}
	c.Image.StateMB = bench.Num(float64(ours.StateBytes())/1e6, 1)
	c.Image.SaveS = bench.Num(ours.SaveTime().Seconds(), 2)
	ref, err := b.Template(ctx, bench.Reference)
	if err != nil {
		return err
	}
	progressf("%srestores x%d (QEMU start to the agent answering)", label, o.n)
	restores, err := b.Restores(ctx, ours, o.n)
	c.Restores = len(restores)
	c.Samples.RestoreS = round(bench.Seconds(restores))
	if len(restores) > 0 {
		c.RestoreS = bench.Num(bench.Median(bench.Seconds(restores)), 3)
	}
	if err != nil {
		fail(label+"restore", err)
	}

	progressf("%sours against the reference, each in a restored VM of the same shape", label)
	res, samples, err := b.CompareAgents(ctx, ours, ref, o.agent)
	if samples != nil {
		cb, rs := c.Samples.ColdBootS, c.Samples.RestoreS
		c.Samples = *samples
		c.Samples.ColdBootS, c.Samples.RestoreS = cb, rs
	}
	if res != nil {
		c.Ours, c.Reference = res[bench.Ours], res[bench.Reference]
	}
	if err != nil {
		fail(label+"agents in the VM", err)
	}
	return nil
}

// runCloud takes the VM numbers again in the debian-cloud guest, when its image is in the
// cache: building it takes minutes and is `make e2e IMAGE=debian-cloud`'s job, not the bench's.
// Our agent goes in through the NoCloud seed, as in the suite; the reference is the qemu-ga the
// image carries (AGENT=image), Debian's own package of the host's release.
func runCloud(ctx context.Context, o options, c *bench.CloudResults, fail func(string, error)) error {
	if o.cloud == cloudOff {
		c.Skipped = "off (-cloud=off)"
		return nil
	}
	progressf("debian-cloud: looking the image up in the cache (it is not built here)")
	cl, err := image.CachedDebianCloud(ctx)
	if err != nil {
		c.Skipped = cloudNotCached
		if !errors.Is(err, image.ErrNotCached) {
			c.Skipped = fmt.Sprintf("not available (%v)", err)
		}
		progressf("debian-cloud: %s", c.Skipped)
		if o.cloud == cloudOn {
			return err
		}
		return nil
	}
	c.ImageDir = cl.Dir
	c.Image = bench.Image{Profile: image.ProfileDebianCloud, KernelVersion: cl.KernelVersion}

	logf, err := os.OpenFile(o.vmLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("VM log: %w", err)
	}
	defer logf.Close()
	defer vm.CloseAll()
	work, err := os.MkdirTemp("", "qgabench-cloud-")
	if err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	defer os.RemoveAll(work)
	ic := image.Config{Image: image.ProfileDebianCloud, Agent: o.ours, Dir: filepath.Join(work, "ours"), Progress: logf}
	ours, err := image.Prepare(ctx, ic)
	if err != nil {
		return fmt.Errorf("prepare debian-cloud with %s: %w", o.ours, err)
	}
	ic.Agent, ic.Dir = image.AgentFromImage, filepath.Join(work, "reference")
	ref, err := image.Prepare(ctx, ic)
	if err != nil {
		return fmt.Errorf("prepare debian-cloud with its own qemu-ga: %w", err)
	}
	b, err := bench.NewVMBench(ctx, bench.VMConfig{
		CloudOurs: ours, CloudReference: ref, Ours: o.ours, Reference: ref.AgentPath() + " (the image's)",
		MemoryMiB: o.memMiB, VCPUs: o.vcpus, WorkDir: work, Log: logf, Progress: os.Stderr,
	})
	if err != nil {
		return err
	}
	c.Measured = true
	// The machine is the tiny run's; this one's facts are not reported again.
	return measure(ctx, b, o, o.cloudN, "debian-cloud ", c, &bench.Machine{}, fail)
}

// describe fills in the machine and image facts a VM knows.
func describe(ctx context.Context, v *vm.VM, m *bench.Machine, im *bench.Image) {
	m.QEMU = v.QMP().Version()
	if kvm, err := bench.QueryKVM(ctx, v); err == nil {
		m.KVM = kvm
	}
	args := v.CommandLine()
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-m":
			im.MemoryMiB, _ = strconv.Atoi(args[i+1])
		case "-smp":
			im.VCPUs, _ = strconv.Atoi(args[i+1])
		case "-cpu":
			im.CPU = args[i+1]
		}
	}
}

func notes(o options) []string {
	return []string{
		"cold_boot_s and restore_s: from QEMU's start until the agent (ours) answers a sync; a restore includes " +
			"migrate-incoming, cont, stepping the guest clock through the console and attaching the agent.",
		"ping and file read: timed from the request to the arrival of the reply's last bytes on the host " +
			"(the harness client's JSON parsing excluded); file_read_mbps is 10^6 bytes/s over open, 48 MiB reads " +
			"until eof, and close of a 64 MiB file in the guest's tmpfs, and every read is checked against the guest's sha256sum.",
		"first_sync_ms in the VM: the console starts the agent by hand after a shell prints a marker on ttyS0; " +
			"from the marker's arrival on the host to the sync reply's (a sync request was waiting on the port). " +
			"On the host: from the exec of a shell that sets LISTEN_PID and execs the agent to the reply.",
		"rss_kb and hwm_kb: VmRSS and VmHWM of the agent process after the file reads.",
		"The two agents run in two restored VMs of the same shape at the same time, measured alternately in blocks, " +
			"so that load changes hit both alike. Other VMs on the host make every number noisy: see machine.load_avg_*.",
		fmt.Sprintf("pings %d, file reads %d, first syncs %d per agent; %d cold boots and restores.",
			o.agent.Pings, o.agent.FileReads, o.agent.FirstSyncs, o.n),
		fmt.Sprintf("debian_cloud: the same numbers in the debian-cloud guest when its image is in the cache (-cloud=%s; "+
			"bench never builds it), with %d cold boots (-cloud-n) and %d restores. Our agent is injected through the NoCloud "+
			"seed; the reference is the image's own qemu-ga (AGENT=image). A snapshot is saved once systemd has finished "+
			"the boot (is-system-running --wait), with the agent attached; the read benchmark's file is in /dev/shm.",
			o.cloud, o.cloudN, o.n),
	}
}

func write(path string, r *bench.Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func round(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		if n := bench.Num(x, 3); n != nil {
			out[i] = *n
		}
	}
	return out
}

func loadAvg() *float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return nil
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return nil
	}
	x, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return nil
	}
	return &x
}

func uname() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
