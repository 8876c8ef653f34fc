package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/qmp"
	"github.com/qgakit/qgakit/harness/vm"
)

// VMConfig is the VM shape and the agents of a VM benchmark run.
type VMConfig struct {
	Tiny      *image.Tiny
	Ours      string // agent binary, e.g. bin/qga
	Reference string // e.g. /usr/sbin/qemu-ga
	MemoryMiB int    // 0: the harness's default
	VCPUs     int    // 0: the harness's default
	// WorkDir holds the injected initramfs images and the snapshots.
	WorkDir string
	// Log receives the VMs' logs (QEMU command lines, serial lines); Progress one line per step.
	Log, Progress io.Writer
}

// The agent's command line in the tiny guest, as its supervisor runs it (see harness/image).
const guestAgentArgs = "-m virtio-serial -p /dev/virtio-ports/" + vm.AgentPortName + " -l /run/qga.log"

// guestFile is where the read benchmark's file lives in the guest: /tmp is a tmpfs, so the
// agent's reads measure the agent and virtio-serial, not a disk.
const guestFile = "/tmp/qgabench.bin"

// VMBench holds what a VM benchmark run prepared: one initramfs per agent.
type VMBench struct {
	cfg     VMConfig
	initrds map[string]string // agent binary -> injected initramfs
}

// NewVMBench injects both agents into the tiny image.
func NewVMBench(ctx context.Context, cfg VMConfig) (*VMBench, error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	b := &VMBench{cfg: cfg, initrds: map[string]string{}}
	for i, agent := range []string{cfg.Ours, cfg.Reference} {
		out := filepath.Join(cfg.WorkDir, "initrd-"+strconv.Itoa(i))
		if err := cfg.Tiny.InjectAgent(ctx, agent, out); err != nil {
			return nil, fmt.Errorf("inject %s: %w", agent, err)
		}
		b.initrds[agent] = out
	}
	return b, nil
}

// options is the VM shape for an agent. Every VM of a run has it, so that cold boots, restores
// and both agents are compared in the same machine.
func (b *VMBench) options(agent, name string) []vm.Option {
	opts := []vm.Option{
		vm.WithName(name),
		vm.WithLog(b.cfg.Log),
		vm.WithKernel(b.cfg.Tiny.Kernel, b.initrds[agent], b.cfg.Tiny.Cmdline(image.TinyOptions{})),
	}
	if b.cfg.MemoryMiB > 0 {
		opts = append(opts, vm.WithMemory(b.cfg.MemoryMiB))
	}
	if b.cfg.VCPUs > 0 {
		opts = append(opts, vm.WithSMP(b.cfg.VCPUs))
	}
	return opts
}

func (b *VMBench) progressf(format string, a ...any) {
	fmt.Fprintf(b.cfg.Progress, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

// guestReady waits until the tiny guest has finished booting: its ready line, the modules it
// loads in the background, a console command (so that clones skip the console probe), and the
// agent attached and answering.
func guestReady(ctx context.Context, v *vm.VM) error {
	if _, err := v.WaitSerial(ctx, "TINY: READY"); err != nil {
		return err
	}
	if _, err := v.WaitSerial(ctx, "TINY: late-modules-loaded"); err != nil {
		return err
	}
	if _, err := v.Console().RunOK(ctx, ":"); err != nil {
		return err
	}
	// Saved with the agent answering, as the specs save their default guest: a restore is then
	// QEMU's load and one sync.
	_, err := v.AttachAgent(ctx)
	return err
}

// ColdBoots boots our agent's VM n times and returns, for each, the time from QEMU's start to
// the agent answering: Start, the guest's ready line, AttachAgent (hot-plug and sync), as the
// specs do it.
func (b *VMBench) ColdBoots(ctx context.Context, n int) ([]time.Duration, *vm.VM, error) {
	var out []time.Duration
	var last *vm.VM
	for i := range n {
		t0 := time.Now()
		v, err := vm.Start(ctx, b.options(b.cfg.Ours, "cold"+strconv.Itoa(i))...)
		if err != nil {
			return out, nil, err
		}
		if _, err := v.WaitSerial(ctx, "TINY: READY"); err != nil {
			v.Close()
			return out, nil, fmt.Errorf("cold boot %d: %w", i, err)
		}
		if _, err := v.AttachAgent(ctx); err != nil {
			v.Close()
			return out, nil, fmt.Errorf("cold boot %d: %w", i, err)
		}
		d := time.Since(t0)
		out = append(out, d)
		b.progressf("cold boot %d/%d: %.2fs", i+1, n, d.Seconds())
		if last != nil {
			last.Close()
		}
		last = v
	}
	return out, last, nil
}

// Template saves the agent's VM once, in the run's work dir.
func (b *VMBench) Template(ctx context.Context, agent, name string) (*vm.Template, error) {
	tpl := vm.NewTemplate(filepath.Join(b.cfg.WorkDir, "tpl-"+name), b.options(agent, name)...)
	if err := tpl.Save(ctx, guestReady); err != nil {
		return nil, err
	}
	return tpl, nil
}

// Restores restores tpl n times and returns, for each, the time from QEMU's start to the agent
// answering (Restore with RestoreAgent: incoming, cont, clock and agent).
func (b *VMBench) Restores(ctx context.Context, tpl *vm.Template, n int) ([]time.Duration, error) {
	var out []time.Duration
	for i := range n {
		t0 := time.Now()
		v, err := tpl.Restore(ctx, vm.RestoreAgent(), vm.RestoreName("restore"+strconv.Itoa(i)))
		if err != nil {
			return out, err
		}
		d := time.Since(t0)
		v.Close()
		out = append(out, d)
		b.progressf("restore %d/%d: %.2fs", i+1, n, d.Seconds())
	}
	return out, nil
}

// guestAgent is one agent's restored VM under measurement.
type guestAgent struct {
	name   string
	binary string
	v      *vm.VM
	c      *Agent
	res    *AgentResult
	sha    [32]byte
	pings  []time.Duration
	reads  []float64 // MB/s
	syncs  []float64 // ms
	manual bool      // the agent was started by hand (the supervisor is gone)
}

// AgentOptions says how much to measure per agent.
type AgentOptions struct {
	Pings, FileReads, FirstSyncs int
}

// CompareAgents restores both agents' templates, runs every agent measurement on both
// (alternating between the two, block by block, so that a change in the host's load hits both
// alike), and returns the results with the raw samples.
func (b *VMBench) CompareAgents(ctx context.Context, ours, ref *vm.Template, o AgentOptions) (map[string]*AgentResult, *Samples, error) {
	agents := []*guestAgent{
		{name: "ours", binary: b.cfg.Ours, res: &AgentResult{Binary: b.cfg.Ours}},
		{name: "reference", binary: b.cfg.Reference, res: &AgentResult{Binary: b.cfg.Reference}},
	}
	defer func() {
		for _, g := range agents {
			if g.c != nil {
				g.c.Close()
			}
			if g.v != nil {
				g.v.Close()
			}
		}
	}()
	for i, tpl := range []*vm.Template{ours, ref} {
		g := agents[i]
		v, err := tpl.Restore(ctx, vm.RestoreAgent(), vm.RestoreName("bench-"+g.name))
		if err != nil {
			return nil, nil, err
		}
		g.v = v
		// Our own connection, whose reads are timed: QEMU's chardev accepts a new client once
		// the harness's has gone, and the first call resynchronises.
		v.Agent().Close()
		if g.c, err = DialAgent(ctx, v.AgentSocket()); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", g.name, err)
		}
		var info struct {
			Version string `json:"version"`
		}
		if err := g.c.Call(ctx, "guest-info", nil, &info); err != nil {
			return nil, nil, fmt.Errorf("%s: guest-info: %w", g.name, err)
		}
		g.res.Version = info.Version
		// 64 MiB of random bytes in the guest's tmpfs, and their hash as the guest computes it.
		out, err := v.Console().RunOK(ctx, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=%d 2>/dev/null && sha256sum %s",
			guestFile, BenchFileSize>>20, guestFile))
		if err != nil {
			return nil, nil, fmt.Errorf("%s: make the file: %w", g.name, err)
		}
		sum, err := hex.DecodeString(strings.Fields(out + " x")[0])
		if err != nil || len(sum) != 32 {
			return nil, nil, fmt.Errorf("%s: sha256sum said %q", g.name, out)
		}
		g.sha = [32]byte(sum)
	}

	var errs []error
	fail := func(g *guestAgent, what string, err error) {
		errs = append(errs, fmt.Errorf("%s %s: %w", g.name, what, err))
	}
	const block = 100
	b.progressf("guest-ping x%d per agent", o.Pings)
	for _, g := range agents {
		if _, err := Ping(ctx, g.c, 10); err != nil { // warm-up, not counted
			fail(g, "ping", err)
		}
	}
	for done := 0; done < o.Pings; done += block {
		for _, g := range agents {
			d, err := Ping(ctx, g.c, min(block, o.Pings-done))
			g.pings = append(g.pings, d...)
			if err != nil {
				fail(g, "ping", err)
			}
		}
	}
	b.progressf("guest-file-read of %d MiB x%d per agent", BenchFileSize>>20, o.FileReads)
	for range o.FileReads {
		for _, g := range agents {
			d, err := FileRead(ctx, g.c, guestFile, BenchFileSize, g.sha)
			if err != nil {
				fail(g, "file read", err)
				continue
			}
			g.reads = append(g.reads, MBps(BenchFileSize, d))
		}
	}
	for _, g := range agents {
		rss, hwm, err := agentMemory(ctx, g.v)
		if err != nil {
			fail(g, "memory", err)
			continue
		}
		g.res.RSSKB, g.res.HWMKB = &rss, &hwm
	}
	b.progressf("first sync x%d per agent", o.FirstSyncs)
	for range o.FirstSyncs {
		for _, g := range agents {
			d, err := g.firstSync(ctx)
			if err != nil {
				fail(g, "first sync", err)
				continue
			}
			g.syncs = append(g.syncs, float64(d)/float64(time.Millisecond))
		}
	}

	results := map[string]*AgentResult{}
	s := &Samples{}
	for _, g := range agents {
		ms := Millis(g.pings)
		g.res.PingCount = len(ms)
		if len(ms) > 0 {
			g.res.PingMedianMs = Num(Median(ms), 3)
			g.res.PingP90Ms = Num(Quantile(ms, 0.9), 3)
		}
		if len(g.reads) > 0 {
			g.res.FileReadMBps = Num(Median(g.reads), 2)
		}
		if len(g.syncs) > 0 {
			g.res.FirstSyncMs = Num(Median(g.syncs), 1)
		}
		results[g.name] = g.res
		quart := quartiles(ms)
		if g.name == "ours" {
			s.OursFileReadMBps, s.OursFirstSyncMs, s.OursPingMsQuartiles = roundAll(g.reads, 2), roundAll(g.syncs, 1), quart
		} else {
			s.RefFileReadMBps, s.RefFirstSyncMs, s.RefPingMsQuartiles = roundAll(g.reads, 2), roundAll(g.syncs, 1), quart
		}
	}
	return results, s, errors.Join(errs...)
}

// agentMemory reads VmRSS and VmHWM (kB) of the guest's agent process from the console.
func agentMemory(ctx context.Context, v *vm.VM) (rss, hwm int64, err error) {
	out, err := v.Console().RunOK(ctx, "set -- $(pidof agent); [ $# -eq 1 ] || { echo \"agents: $*\"; exit 1; }; grep -E '^Vm(RSS|HWM):' /proc/$1/status")
	if err != nil {
		return 0, 0, err
	}
	rss, hwm = parseProcMemory(out)
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in %q", out)
	}
	return rss, hwm, nil
}

// firstSync measures the time from the agent's exec to its first answered sync. The agent is
// stopped (the first time with its supervisor, so that nothing restarts it), a sync request is
// written to the port, where it waits in QEMU's socket until an agent opens the port, and the
// console starts the agent by hand: a shell prints a marker on ttyS0 and execs the agent. The
// start is when the marker reaches the host and the end when the sync reply does, both on the
// host's clock, so no guest/host clock mapping enters. The marker's own trip (a few ms of
// serial line) shortens the measured time a little, alike for both agents.
func (g *guestAgent) firstSync(ctx context.Context) (time.Duration, error) {
	m := g.v.QMP()
	mark := m.Mark()
	stop := "kill $(cat /run/qgabench-agent.pid)"
	if !g.manual {
		// The supervisor is the agent's parent: stop it first, or it restarts the agent.
		stop = `set -- $(pidof agent); [ $# -eq 1 ] || { echo "agents: $*"; exit 1; }; ` +
			`s=$(awk '/^PPid:/{print $2}' /proc/$1/status); grep -q supervisor /proc/$s/cmdline || ` +
			`{ echo "the agent's parent $s is no supervisor"; exit 1; }; kill $s && kill $1`
	}
	if _, err := g.v.Console().RunOK(ctx, stop); err != nil {
		return 0, fmt.Errorf("stop the agent: %w", err)
	}
	g.manual = true
	if _, err := m.WaitEventAfter(ctx, mark, "VSERPORT_CHANGE", func(e qmp.Event) bool { return !e.Bool("open") }); err != nil {
		return 0, fmt.Errorf("the agent did not close its port: %w", err)
	}
	id, err := sendSync(ctx, g.c)
	if err != nil {
		return 0, err
	}
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	marker := "QGABENCH-EXEC-" + hex.EncodeToString(nonce[:])
	smark := g.v.SerialMark()
	type stamp struct {
		at  time.Time
		err error
	}
	started, answered := make(chan stamp, 1), make(chan stamp, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, err := g.v.WaitSerialAfter(wctx, smark, marker)
		started <- stamp{time.Now(), err}
	}()
	go func() {
		at, err := awaitSync(wctx, g.c, id)
		answered <- stamp{at, err}
	}()
	launch := fmt.Sprintf("sh -c 'echo $$ > /run/qgabench-agent.pid; echo %s > /dev/ttyS0; exec %s %s' </dev/null >>/run/qga.out 2>&1 &",
		marker, image.AgentPath, guestAgentArgs)
	if _, err := g.v.Console().RunOK(ctx, launch); err != nil {
		return 0, fmt.Errorf("start the agent: %w", err)
	}
	s, a := <-started, <-answered
	if s.err != nil {
		return 0, fmt.Errorf("exec marker: %w", s.err)
	}
	if a.err != nil {
		return 0, a.err
	}
	return a.at.Sub(s.at), nil
}

// QueryKVM reports whether the VM runs under KVM (QMP query-kvm).
func QueryKVM(ctx context.Context, v *vm.VM) (bool, error) {
	var k struct {
		Enabled bool `json:"enabled"`
	}
	if err := v.QMP().Execute(ctx, "query-kvm", nil, &k); err != nil {
		return false, err
	}
	return k.Enabled, nil
}

func quartiles(xs []float64) []float64 {
	if len(xs) == 0 {
		return nil
	}
	out := make([]float64, 0, 5)
	for _, q := range []float64{0, 0.25, 0.5, 0.75, 1} {
		out = append(out, round(Quantile(xs, q), 3))
	}
	return out
}

func roundAll(xs []float64, digits int) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = round(x, digits)
	}
	return out
}
