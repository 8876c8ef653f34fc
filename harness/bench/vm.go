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

// VMConfig is the VM shape and the agents of a VM benchmark run: the tiny image with both
// agents injected, or a cloud image prepared once per agent.
type VMConfig struct {
	// Tiny is the image both agents are injected into, unless CloudOurs is set.
	Tiny *image.Tiny
	// CloudOurs and CloudReference are a cloud image prepared (image.Prepare) with our agent
	// and with the reference; they replace Tiny.
	CloudOurs, CloudReference *image.Prepared
	// Ours is our agent's binary, e.g. bin/qga.
	Ours string
	// Reference is the reference's, e.g. /usr/sbin/qemu-ga; on a cloud image only what the
	// report calls it.
	Reference string
	// MemoryMiB and VCPUs override the profile's and the harness's defaults when not 0.
	MemoryMiB, VCPUs int
	// WorkDir holds the injected initramfs images and the snapshots.
	WorkDir string
	// Log receives the VMs' logs (QEMU command lines, serial lines); Progress one line per step.
	Log, Progress io.Writer
}

// Roles of the two agents a run compares (Template's argument).
const (
	Ours      = "ours"
	Reference = "reference"
)

// The agent's command line in the guest, as the supervisors of both profiles run it (see
// harness/image).
const guestAgentArgs = "-m virtio-serial -p /dev/virtio-ports/" + vm.AgentPortName + " -l /run/qga.log"

// Where the read benchmark's file lives in the guest: a tmpfs, so that the agent's reads
// measure the agent and virtio-serial, not a disk. A systemd guest's /tmp is on its root disk,
// and its /run is too small for the file (10% of the memory).
const (
	tinyGuestFile  = "/tmp/qgabench.bin"
	cloudGuestFile = "/dev/shm/qgabench.bin"
)

// guestBoot is how one agent's guest boots.
type guestBoot struct {
	binary string      // what the report calls the agent
	opts   []vm.Option // kernel, CPU, the profile's disks
	path   string      // the agent's path in the guest
	// timeout bounds one boot up to the ready line on a loaded TCG host.
	timeout time.Duration
}

// VMBench holds what a VM benchmark run prepared: the boot of each agent's guest.
type VMBench struct {
	cfg     VMConfig
	profile string
	ready   string // the guest's ready line on ttyS0
	file    string // the read benchmark's file in the guest
	boots   map[string]*guestBoot
}

// NewVMBench injects both agents into the tiny image, or, with cfg.CloudOurs, writes the
// seeds of both cloud guests.
func NewVMBench(ctx context.Context, cfg VMConfig) (*VMBench, error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	b := &VMBench{cfg: cfg, boots: map[string]*guestBoot{}}
	if cfg.CloudOurs != nil {
		if cfg.CloudReference == nil {
			return nil, errors.New("bench: a cloud image prepared with our agent but none with the reference")
		}
		b.profile, b.ready, b.file = cfg.CloudOurs.Profile, cfg.CloudOurs.Marker(image.EventReady), cloudGuestFile
		for role, p := range map[string]*image.Prepared{Ours: cfg.CloudOurs, Reference: cfg.CloudReference} {
			gb, err := preparedBoot(ctx, p)
			if err != nil {
				return nil, fmt.Errorf("%s agent's guest: %w", role, err)
			}
			gb.binary = cfg.Ours
			if role == Reference {
				gb.binary = cfg.Reference
			}
			b.boots[role] = gb
		}
		return b, nil
	}
	b.profile, b.ready, b.file = image.ProfileTiny, "TINY: "+image.EventReady, tinyGuestFile
	for role, agent := range map[string]string{Ours: cfg.Ours, Reference: cfg.Reference} {
		out := filepath.Join(cfg.WorkDir, "initrd-"+role)
		if err := cfg.Tiny.InjectAgent(ctx, agent, out); err != nil {
			return nil, fmt.Errorf("inject %s: %w", agent, err)
		}
		b.boots[role] = &guestBoot{
			binary:  agent,
			opts:    []vm.Option{vm.WithKernel(cfg.Tiny.Kernel, out, cfg.Tiny.Cmdline(image.TinyOptions{}))},
			path:    image.AgentPath,
			timeout: 2 * time.Minute,
		}
	}
	return b, nil
}

// preparedBoot turns a prepared image's default guest into vm options the way the specs do
// (specs/suite_test.go's guestVMOptions): the kernel, the profile's memory and CPU, then its
// own disks, found by label in the guest.
func preparedBoot(ctx context.Context, p *image.Prepared) (*guestBoot, error) {
	g, err := p.Guest(ctx, image.GuestOptions{})
	if err != nil {
		return nil, fmt.Errorf("IMAGE=%s: %w", p.Image, err)
	}
	opts, disks := vm.GuestOptions(g)
	for _, d := range disks {
		opts = append(opts, vm.WithDisk(d))
	}
	return &guestBoot{opts: opts, path: p.AgentPath(), timeout: g.BootTimeout}, nil
}

// options is the VM shape for an agent's guest. Every VM of a run has it, so that cold boots,
// restores and both agents are compared in the same machine.
func (b *VMBench) options(role, name string) []vm.Option {
	opts := []vm.Option{vm.WithName(name), vm.WithLog(b.cfg.Log)}
	opts = append(opts, b.boots[role].opts...)
	// After the profile's own choice of memory, which the flag overrides.
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

// guestReady waits until the guest has finished booting: its ready line; on tiny the modules
// it loads in the background and a console command, on a cloud image the console and systemd
// done starting units (so that clones spend no time on either); then the agent attached and
// answering.
func (b *VMBench) guestReady(ctx context.Context, v *vm.VM) error {
	if _, err := v.WaitSerial(ctx, b.ready); err != nil {
		return fmt.Errorf("wait for %q: %w", b.ready, err)
	}
	if b.profile == image.ProfileTiny {
		if _, err := v.WaitSerial(ctx, "TINY: late-modules-loaded"); err != nil {
			return fmt.Errorf("wait for the late modules: %w", err)
		}
	} else {
		if err := v.Console().WaitReady(ctx); err != nil {
			return err
		}
		// Bounded in the guest, so that a unit that never settles cannot hold the console;
		// "degraded" (its non-zero exit) is as finished as "running".
		out, _, err := v.Console().Run(ctx, "timeout 180 systemctl is-system-running --wait")
		if err != nil {
			return fmt.Errorf("wait for systemd to finish the boot: %w", err)
		}
		b.progressf("systemd: %s", strings.TrimSpace(out))
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
	boot := func(i int) (time.Duration, *vm.VM, error) {
		bctx, cancel := context.WithTimeout(ctx, b.boots[Ours].timeout)
		defer cancel()
		t0 := time.Now()
		v, err := vm.Start(bctx, b.options(Ours, "cold"+strconv.Itoa(i))...)
		if err != nil {
			return 0, nil, err
		}
		if _, err := v.WaitSerial(bctx, b.ready); err != nil {
			v.Close()
			return 0, nil, fmt.Errorf("cold boot %d: %w", i, err)
		}
		if _, err := v.AttachAgent(bctx); err != nil {
			v.Close()
			return 0, nil, fmt.Errorf("cold boot %d: %w", i, err)
		}
		return time.Since(t0), v, nil
	}
	for i := range n {
		d, v, err := boot(i)
		if err != nil {
			return out, last, err
		}
		out = append(out, d)
		b.progressf("%s cold boot %d/%d: %.2fs", b.profile, i+1, n, d.Seconds())
		if last != nil {
			last.Close()
		}
		last = v
	}
	return out, last, nil
}

// Template saves the VM of the agent in role (Ours or Reference) once, in the run's work dir.
func (b *VMBench) Template(ctx context.Context, role string) (*vm.Template, error) {
	gb, ok := b.boots[role]
	if !ok {
		return nil, fmt.Errorf("bench: no agent %q", role)
	}
	// A boot, plus systemd's own bound on finishing it.
	ctx, cancel := context.WithTimeout(ctx, gb.timeout+4*time.Minute)
	defer cancel()
	tpl := vm.NewTemplate(filepath.Join(b.cfg.WorkDir, "tpl-"+role), b.options(role, role)...)
	if err := tpl.Save(ctx, b.guestReady); err != nil {
		return nil, fmt.Errorf("save the %s agent's %s guest: %w", role, b.profile, err)
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
	path   string // in the guest
	stop   string // the console command that stops the agent and its supervisor
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
	var agents []*guestAgent
	for _, role := range []string{Ours, Reference} {
		gb := b.boots[role]
		agents = append(agents, &guestAgent{name: role, path: gb.path, stop: b.stopAgent(gb.path), res: &AgentResult{Binary: gb.binary}})
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
			b.file, BenchFileSize>>20, b.file))
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
			d, err := FileRead(ctx, g.c, b.file, BenchFileSize, g.sha)
			if err != nil {
				fail(g, "file read", err)
				continue
			}
			g.reads = append(g.reads, MBps(BenchFileSize, d))
		}
	}
	for _, g := range agents {
		rss, hwm, err := agentMemory(ctx, g.v, g.path)
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
		if g.name == Ours {
			s.OursFileReadMBps, s.OursFirstSyncMs, s.OursPingMsQuartiles = roundAll(g.reads, 2), roundAll(g.syncs, 1), quart
		} else {
			s.RefFileReadMBps, s.RefFirstSyncMs, s.RefPingMsQuartiles = roundAll(g.reads, 2), roundAll(g.syncs, 1), quart
		}
	}
	return results, s, errors.Join(errs...)
}

// agentMemory reads VmRSS and VmHWM (kB) of the guest's agent process, the one running path,
// from the console.
func agentMemory(ctx context.Context, v *vm.VM, path string) (rss, hwm int64, err error) {
	out, err := v.Console().RunOK(ctx, fmt.Sprintf("set -- $(pidof %s); [ $# -eq 1 ] || { echo \"agents: $*\"; exit 1; }; grep -E '^Vm(RSS|HWM):' /proc/$1/status",
		filepath.Base(path)))
	if err != nil {
		return 0, 0, err
	}
	rss, hwm = parseProcMemory(out)
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in %q", out)
	}
	return rss, hwm, nil
}

// stopAgent is the console command that stops the agent running path for good, the first
// time firstSync starts it by hand.
func (b *VMBench) stopAgent(path string) string {
	if b.profile != image.ProfileTiny {
		// The seed runs the supervisor as a transient unit that systemd restarts; stopping the
		// unit ends the agent with it.
		return "systemctl stop qgakit-agent"
	}
	// The supervisor is the agent's parent: stop it first, or it restarts the agent.
	return fmt.Sprintf(`set -- $(pidof %s); [ $# -eq 1 ] || { echo "agents: $*"; exit 1; }; `, filepath.Base(path)) +
		`s=$(awk '/^PPid:/{print $2}' /proc/$1/status); grep -q supervisor /proc/$s/cmdline || ` +
		`{ echo "the agent's parent $s is no supervisor"; exit 1; }; kill $s && kill $1`
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
		stop = g.stop
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
		marker, g.path, guestAgentArgs)
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
