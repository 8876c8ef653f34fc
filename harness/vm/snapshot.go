package vm

// Snapshots: boot a machine once, save its whole state, and start every spec from that state
// instead of a cold boot (≈0.5 s instead of ≈5 s to the agent answering under TCG).
//
// The mechanism is QEMU's own migration to a file: `stop`, `migrate` to "exec:cat > state.bin"
// on the source, and on each clone `-incoming defer` plus `migrate-incoming` from
// "exec:cat state.bin", then `cont` (the source was stopped, and that run state travels in the
// stream, so a clone comes up paused). Migration carries RAM and device state, not the machine's
// shape: the clone's command line must create the same devices in the same order with the same
// properties, or the load fails or, worse, succeeds into a subtly different machine. Hence the
// API: a Template holds the options, every clone is made from them and nothing else (a
// RestoreOption can only change what is not part of the machine: the log, the -name, the temp
// root), and the saved manifest records the normalised command line that Restore compares its
// own against before loading anything.
//
// Disks: migration does not copy disk contents, and the guest's page cache in the saved RAM
// must agree with what the disks hold. So the template boots on its own qcow2 overlays, which
// are kept with the state (read-only from then on), and each clone gets a fresh overlay over
// them: clones never share a written block, and the bases stay untouched.
//
// The agent's port may be part of a snapshot: when Save's ready function attached the agent
// (AttachAgent), the saved guest has its agent running with the port open, and every clone
// hot-plugs the same port (same chardev, id and bus, so the same port number) while QEMU waits
// for the incoming state, connects to it, and has an agent that answers as soon as the guest
// runs: no port to appear, no mdev or supervisor to notice it, no agent to exec (under TCG those
// take most of a second). A template saved without the port gives clones without it, to attach
// after the restore (AttachAgent), when the guest's agent starts as after a cold boot.
//
// What clones share and a cold boot would not: the guest's clock is as old as the snapshot
// (Restore steps it back, see SetGuestClock), the kernel's RNG state (the same random numbers
// until the virtio-rng device and interrupts reseed it), the MACs and every other identity the
// guest had at save time (fine for user-mode NICs, which are private to each QEMU), and the
// serial logs start empty (a clone never prints the boot's "TINY: READY" again).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/qmp"
)

// snapshotFormat names the manifest's layout; a manifest of another format is refused.
const snapshotFormat = "qgakit-snapshot/1"

// Files of a template directory.
const (
	snapshotManifestFile = "snapshot.json"
	snapshotStateFile    = "state.bin"
)

// Template is one machine configuration whose booted state is saved once (Save) and started
// from many times (Restore), each time on fresh disk overlays. It is safe for concurrent
// Restores. Several processes (Ginkgo's parallel ones) share a saved template by each making a
// Template with the same directory and the same options: one Saves, the others only Restore.
type Template struct {
	dir  string
	opts []Option

	mu  sync.Mutex
	man *snapshotManifest // nil until saved or loaded
}

// snapshotManifest is snapshot.json: what was saved and what it was saved from. It is written
// last, so its presence means a complete snapshot.
type snapshotManifest struct {
	Format string `json:"format"`
	// Machine is the template's QEMU command line, normalised (see machineArgs): a clone's
	// must be identical.
	Machine []string `json:"machine"`
	// QEMU is the version QEMU reported; a clone's must be the same.
	QEMU string `json:"qemu"`
	// Disks are the node names of the overlays kept in the template directory, in disk order.
	Disks []string `json:"disks"`
	// Inputs are the files the machine was made from (kernel, initrd, disk bases), which must
	// not change while the snapshot is used: the overlays are backed by the bases, and a clone
	// that reboots loads the kernel and initrd again.
	Inputs []fileStamp `json:"inputs"`
	// ConsoleReady is set when the console shell had run a command before the save: it is then
	// reading its line in every clone, and a clone's console needs no WaitReady probe.
	ConsoleReady bool `json:"console_ready"`
	// Agent is set when the agent's port was attached at the save: every clone plugs it before
	// loading the state.
	Agent      bool      `json:"agent,omitempty"`
	StateBytes int64     `json:"state_bytes"`
	SavedAt    time.Time `json:"saved_at"`
	// SaveSeconds is how long stop + migrate to the state file took.
	SaveSeconds float64 `json:"save_seconds"`
}

// fileStamp identifies a file's contents cheaply: a changed file has another size or mtime.
type fileStamp struct {
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mod_time"`
}

// NewTemplate returns the template of the machine that opts describe, kept in dir (created by
// Save; the state file holds the guest's used RAM, so on a tmpfs it costs memory). The options
// are those of Start; every disk gets an overlay whatever its Overlay field says.
func NewTemplate(dir string, opts ...Option) *Template {
	return &Template{dir: dir, opts: append([]Option(nil), opts...)}
}

// Dir is the template's directory.
func (t *Template) Dir() string { return t.dir }

// StateBytes is the size of the saved state file, 0 before the template is saved or loaded.
func (t *Template) StateBytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.man == nil {
		return 0
	}
	return t.man.StateBytes
}

// SaveTime is how long Save's stop and migration to the state file took, 0 before the template
// is saved or loaded.
func (t *Template) SaveTime() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.man == nil {
		return 0
	}
	return time.Duration(t.man.SaveSeconds * float64(time.Second))
}

// Save boots the machine, runs ready on it (wait for the guest to be where every clone should
// start, e.g. for its "ready" line on the serial log; nil to save right after QEMU started),
// then stops it, saves its state into the template directory and ends that QEMU: a source can
// be migrated once. ready may attach the agent (AttachAgent), which clones then start with,
// answering; it must not detach it or hot-plug anything else (Save refuses the result): a
// clone's machine is the command line's plus, at most, the agent's port.
//
// A directory is saved into once: Save fails when it already holds a snapshot.
func (t *Template) Save(ctx context.Context, ready func(context.Context, *VM) error) error {
	return t.save(ctx, ready, false)
}

// SaveOnce is Save for several processes sharing the template directory (Ginkgo's parallel
// processes): the first to get there saves, while the others wait for it and then use its
// snapshot. It returns nil when the directory already holds a snapshot.
func (t *Template) SaveOnce(ctx context.Context, ready func(context.Context, *VM) error) error {
	return t.save(ctx, ready, true)
}

func (t *Template) save(ctx context.Context, ready func(context.Context, *VM) error, once bool) error {
	t.mu.Lock()
	if t.man != nil {
		t.mu.Unlock()
		if once {
			return nil
		}
		return fmt.Errorf("vm: save template %s: already saved", t.dir)
	}
	t.mu.Unlock()
	if err := os.MkdirAll(t.dir, 0o755); err != nil {
		return fmt.Errorf("vm: save template: %w", err)
	}
	unlock, err := lockDir(ctx, t.dir)
	if err != nil {
		return fmt.Errorf("vm: save template %s: %w", t.dir, err)
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(t.dir, snapshotManifestFile)); err == nil {
		if !once {
			return fmt.Errorf("vm: save template %s: it already holds a snapshot (Restore from it, or remove it first)", t.dir)
		}
		if _, err := t.manifest(); err != nil {
			return fmt.Errorf("vm: save template %s: %w", t.dir, err)
		}
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.saveLocked(ctx, ready)
}

// lockDir takes an exclusive lock on dir/.lock, waiting for another process's as long as ctx
// allows; flock locks go away with their holder, so a crashed saver blocks no one.
func lockDir(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	locked := make(chan error, 1)
	go func() { locked <- unix.Flock(int(f.Fd()), unix.LOCK_EX) }()
	select {
	case err := <-locked:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		return func() { f.Close() }, nil
	case <-ctx.Done():
		// Closing the file does not end a blocked flock: it ends when the holder lets go, and
		// then the lock dies with this file.
		go func() { _ = <-locked; _ = f.Close() }()
		return nil, fmt.Errorf("wait for the lock on %s: %w", dir, context.Cause(ctx))
	}
}

// saveLocked does Save's work; t.mu and the directory lock are held.
func (t *Template) saveLocked(ctx context.Context, ready func(context.Context, *VM) error) (err error) {
	cfg := newConfig(t.opts)
	for i := range cfg.disks {
		cfg.disks[i].Overlay = true
	}
	inputs, err := cfg.inputStamps()
	if err != nil {
		return fmt.Errorf("vm: save template %s: %w", t.dir, err)
	}
	v, err := start(ctx, cfg)
	if err != nil {
		return fmt.Errorf("vm: save template %s: %w", t.dir, err)
	}
	defer v.Close()
	statePath := filepath.Join(t.dir, snapshotStateFile)
	var kept []string // files to remove again when saving fails
	defer func() {
		if err != nil {
			for _, f := range kept {
				os.Remove(f)
			}
			err = fmt.Errorf("vm: save template %s: %w", t.dir, err)
		}
	}()

	devices, err := v.peripherals(ctx)
	if err != nil {
		return err
	}
	if ready != nil {
		if err := ready(ctx, v); err != nil {
			return fmt.Errorf("the guest did not get ready: %w", err)
		}
	}
	v.amu.Lock()
	agent, detached := v.agent != nil, len(v.oldAgentTrs) > 0
	v.amu.Unlock()
	if detached {
		return errors.New("the agent's port was detached or failed to attach before the save; a clone could not tell which port its guest holds")
	}
	if agent {
		// A clone plugs the agent's port itself (plugAgentPort): it is the one hot-plug a
		// snapshot may hold.
		devices = append(devices, "/machine/peripheral/"+agentDevice)
		slices.Sort(devices)
	}
	if after, err := v.peripherals(ctx); err != nil {
		return err
	} else if !slices.Equal(devices, after) {
		return fmt.Errorf("devices were hot-plugged or unplugged before the save (%v at start, %v now); a snapshot's machine must be its command line's, plus the agent's port", devices, after)
	}

	v.console.readyMu.Lock()
	consoleReady := v.console.ready
	v.console.readyMu.Unlock()

	m := v.QMP()
	began := time.Now()
	if err := m.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	kept = append(kept, statePath)
	if err := migrate(ctx, m, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(statePath)}); err != nil {
		return fmt.Errorf("save the state: %w", err)
	}
	saveSeconds := time.Since(began).Seconds()
	// Quit before taking the overlays: QEMU has flushed them when the migration completed,
	// and nothing may write them once they back clones.
	if _, err := v.Stop(ctx); err != nil {
		return err
	}
	st, err := os.Stat(statePath)
	if err != nil {
		return err
	}
	man := &snapshotManifest{
		Format:       snapshotFormat,
		Machine:      machineArgs(v.argv, v.dir),
		QEMU:         m.Version(),
		Inputs:       inputs,
		ConsoleReady: consoleReady,
		Agent:        agent,
		StateBytes:   st.Size(),
		SavedAt:      began,
		SaveSeconds:  saveSeconds,
	}
	for i, d := range cfg.disks {
		node := diskNode(d, i)
		dst := filepath.Join(t.dir, node+".qcow2")
		if err := os.Rename(filepath.Join(v.dir, node+".qcow2"), dst); err != nil {
			return fmt.Errorf("keep the overlay of %s: %w", node, err)
		}
		kept = append(kept, dst)
		// Clones read it through their own overlays; a write would change every clone's disk.
		if err := os.Chmod(dst, 0o444); err != nil {
			return err
		}
		man.Disks = append(man.Disks, node)
	}
	b, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(t.dir, snapshotManifestFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(t.dir, snapshotManifestFile)); err != nil {
		os.Remove(tmp)
		return err
	}
	t.man = man
	v.logf("saved %d MB of state to %s in %.2fs", st.Size()>>20, statePath, saveSeconds)
	return nil
}

// manifest returns the saved manifest, reading it on first use (a template another process
// saved) and checking that it still describes this template's inputs.
func (t *Template) manifest() (*snapshotManifest, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.man != nil {
		return t.man, nil
	}
	b, err := os.ReadFile(filepath.Join(t.dir, snapshotManifestFile))
	if err != nil {
		return nil, fmt.Errorf("the template is not saved: %w", err)
	}
	var man snapshotManifest
	if err := json.Unmarshal(b, &man); err != nil {
		return nil, fmt.Errorf("read %s: %w", snapshotManifestFile, err)
	}
	if man.Format != snapshotFormat {
		return nil, fmt.Errorf("%s has format %q, want %q", snapshotManifestFile, man.Format, snapshotFormat)
	}
	t.man = &man
	return t.man, nil
}

// RestoreOption changes what a restored VM may differ in from its template: nothing that is part
// of the machine.
type RestoreOption func(*restoreConfig)

type restoreConfig struct {
	log       io.Writer
	name      string
	tempRoot  string
	keepClock bool
	agent     bool
}

// RestoreLog sends the restored VM's log where WithLog would (default: the template's).
func RestoreLog(w io.Writer) RestoreOption { return func(c *restoreConfig) { c.log = w } }

// RestoreName names the restored VM (-name and log prefixes; default: the template's).
func RestoreName(name string) RestoreOption { return func(c *restoreConfig) { c.name = name } }

// RestoreTempRoot is WithTempRoot for the restored VM.
func RestoreTempRoot(dir string) RestoreOption {
	return func(c *restoreConfig) { c.tempRoot = dir }
}

// KeepSnapshotClock leaves the guest's clock as old as the snapshot instead of setting it from
// the console, for guests without a console shell (and tests of the restore itself).
func KeepSnapshotClock() RestoreOption { return func(c *restoreConfig) { c.keepClock = true } }

// RestoreAgent makes Restore also return with the agent answering, at the same time as it sets
// the clock: the two wait on different channels (the console, the agent's port), so the restore
// takes as long as the slower of them instead of both. From a template saved with the agent
// attached that is one sync; from one saved without, an AttachAgent.
func RestoreAgent() RestoreOption { return func(c *restoreConfig) { c.agent = true } }

// Restore starts a new VM from the saved state, on fresh overlays of every disk: QEMU with the
// template's command line plus -incoming defer, migrate-incoming from the state file, cont, and
// (unless KeepSnapshotClock) SetGuestClock. The guest then runs where Save's ready left it. A
// template saved with the agent attached restores with it attached (Agent is set; RestoreAgent
// also waits for it to answer); one saved without has the agent's port attached only with
// RestoreAgent (otherwise call AttachAgent: the guest's agent starts when the port appears).
// ctx bounds the restore only, as for Start.
func (t *Template) Restore(ctx context.Context, opts ...RestoreOption) (*VM, error) {
	v, err := t.restore(ctx, opts)
	if err != nil {
		if v != nil {
			v.Close()
		}
		return nil, err
	}
	return v, nil
}

// RestoreT is Restore for a test, as StartT is Start: the log goes to tb.Logf, and cleanup
// writes artifacts to $ARTIFACTS/<test name>/ when the test failed (also when the restore
// itself failed), then closes the VM.
func (t *Template) RestoreT(tb TB, ctx context.Context, opts ...RestoreOption) *VM {
	tb.Helper()
	opts = append([]RestoreOption{RestoreLog(tbWriter{tb}), RestoreName(shortName(tb.Name()))}, opts...)
	v, err := t.restore(ctx, opts)
	if v != nil {
		closeWithT(tb, v)
	}
	if err != nil {
		tb.Fatalf("%v", err)
		return nil
	}
	return v
}

// restore does Restore's work; on failure it returns the VM too (when QEMU was started), so that
// RestoreT can keep its artifacts. The caller closes it.
func (t *Template) restore(ctx context.Context, opts []RestoreOption) (*VM, error) {
	man, err := t.manifest()
	if err != nil {
		return nil, fmt.Errorf("vm: restore from %s: %w", t.dir, err)
	}
	cfg := newConfig(t.opts)
	rc := restoreConfig{log: cfg.log, name: cfg.name, tempRoot: cfg.tempRoot}
	for _, o := range opts {
		o(&rc)
	}
	cfg.log, cfg.name, cfg.tempRoot = rc.log, rc.name, rc.tempRoot
	inputs, err := cfg.inputStamps()
	if err != nil {
		return nil, fmt.Errorf("vm: restore from %s: %w", t.dir, err)
	}
	if !slices.Equal(inputs, man.Inputs) {
		return nil, fmt.Errorf("vm: restore from %s: the machine's files changed since the save (%v, saved from %v)", t.dir, inputs, man.Inputs)
	}
	if len(man.Disks) != len(cfg.disks) {
		return nil, fmt.Errorf("vm: restore from %s: %d disks saved, the options give %d", t.dir, len(man.Disks), len(cfg.disks))
	}
	for i, d := range cfg.disks {
		node := diskNode(d, i)
		if node != man.Disks[i] {
			return nil, fmt.Errorf("vm: restore from %s: disk %d is %s, saved as %s", t.dir, i, node, man.Disks[i])
		}
		d.Path, d.Format, d.Overlay, d.Node = filepath.Join(t.dir, node+".qcow2"), "qcow2", true, node
		cfg.disks[i] = d
	}
	cfg.extra = append(cfg.extra, "-incoming", "defer")

	began := time.Now()
	v, err := start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("vm: restore from %s: %w", t.dir, err)
	}
	fail := func(err error) (*VM, error) {
		return v, fmt.Errorf("vm: restore from %s: %w", t.dir, err)
	}
	if got := machineArgs(v.argv, v.dir); !slices.Equal(got, man.Machine) {
		return fail(fmt.Errorf("the machine differs from the saved one:\n  saved: %s\n  now:   %s",
			strings.Join(man.Machine, " "), strings.Join(got, " ")))
	}
	m := v.QMP()
	if m.Version() != man.QEMU {
		return fail(fmt.Errorf("saved by QEMU %s, this is %s", man.QEMU, m.Version()))
	}
	var agent *qga.Client
	if man.Agent {
		v.amu.Lock()
		agent, err = v.plugAgentPort(ctx)
		v.amu.Unlock()
		if err != nil {
			return fail(fmt.Errorf("plug the agent's port: %w", err))
		}
	}
	statePath := filepath.Join(t.dir, snapshotStateFile)
	if err := migrate(ctx, m, "migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(statePath)}); err != nil {
		return fail(fmt.Errorf("load the state: %w", err))
	}
	// The clock's console command and the agent's sync are written before cont: they wait in
	// QEMU's socket buffers while the guest is paused and are the first thing it reads when it
	// runs, so the restore pays for no console or agent round trip after cont. (The clock is
	// then set from a time taken a few milliseconds before the guest reads it; date -s takes
	// whole seconds anyway.)
	if man.ConsoleReady {
		v.console.readyMu.Lock()
		v.console.ready = true
		v.console.readyMu.Unlock()
	}
	clockErr, syncErr := make(chan error, 1), make(chan error, 1)
	if rc.keepClock {
		clockErr <- nil
	} else {
		go func() { clockErr <- v.SetGuestClock(ctx) }()
	}
	if rc.agent && agent != nil {
		// The guest's agent has the port open since before the save and knows nothing of this
		// connection: a sync with 0xFF clears whatever it half-read.
		go func() {
			err := agent.SyncUntil(ctx, syncAttempt)
			if err == nil {
				v.logf("agent answering")
			}
			syncErr <- err
		}()
	} else {
		syncErr <- nil
	}
	// On a failure from here on, the caller's Close ends the two waits above.
	if err := m.Execute(ctx, "cont", nil, nil); err != nil {
		return fail(err)
	}
	v.logf("restored from %s in %v", t.dir, time.Since(began).Round(time.Millisecond))
	var attachErr error
	if rc.agent && agent == nil {
		_, attachErr = v.AttachAgent(ctx)
	}
	if err := errors.Join(<-clockErr, <-syncErr, attachErr); err != nil {
		return fail(err)
	}
	return v, nil
}

// migrate runs a migration command (migrate or migrate-incoming) and waits for its MIGRATION
// event to say it completed. The "events" capability is set first: without it QEMU sends no
// MIGRATION events, and polling query-migrate would be the only way to know.
func migrate(ctx context.Context, m *qmp.Monitor, cmd string, args map[string]any) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "events", "state": true}}}
	if err := m.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		return err
	}
	mark := m.Mark()
	if err := m.Execute(ctx, cmd, args, nil); err != nil {
		return err
	}
	ev, err := m.WaitEventAfter(ctx, mark, "MIGRATION", func(e qmp.Event) bool {
		switch e.Str("status") {
		case "completed", "failed", "cancelled":
			return true
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("wait for the migration: %w", err)
	}
	if st := ev.Str("status"); st != "completed" {
		// query-migrate says why (on the source; an incoming side has less to say).
		var info struct {
			ErrorDesc string `json:"error-desc"`
		}
		_ = m.Execute(ctx, "query-migrate", nil, &info)
		return fmt.Errorf("migration %s: %s", st, info.ErrorDesc)
	}
	return nil
}

// peripherals lists the devices QOM knows under /machine/peripheral (with an id) and
// /machine/peripheral-anon (without), which is where device_add puts what it plugs.
func (v *VM) peripherals(ctx context.Context) ([]string, error) {
	var all []string
	for _, path := range []string{"/machine/peripheral", "/machine/peripheral-anon"} {
		var props []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		}
		if err := v.QMP().Execute(ctx, "qom-list", map[string]any{"path": path}, &props); err != nil {
			return nil, fmt.Errorf("list the devices: %w", err)
		}
		for _, p := range props {
			if strings.HasPrefix(p.Type, "child<") {
				all = append(all, path+"/"+p.Name)
			}
		}
	}
	slices.Sort(all)
	return all, nil
}

// machineArgs normalises a command line for comparison between a template and its clones: the
// binary, -name (cosmetic), the trailing -incoming of a clone go; the VM's own directory (pid
// file, overlays) becomes "$VMDIR".
func machineArgs(argv []string, dir string) []string {
	var out []string
	args := argv[1:]
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-name", "-incoming":
			i++
			continue
		}
		out = append(out, strings.ReplaceAll(args[i], dir+"/", "$VMDIR/"))
	}
	return out
}

// diskNode is the node name resolveDisks gives disk i.
func diskNode(d Disk, i int) string {
	if d.Node != "" {
		return d.Node
	}
	return "disk" + strconv.Itoa(i)
}

// inputStamps stamps the files the machine is made from.
func (c *config) inputStamps() ([]fileStamp, error) {
	paths := []string{c.kernel, c.initrd}
	for _, d := range c.disks {
		paths = append(paths, d.Path)
	}
	var out []fileStamp
	for _, p := range paths {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("stamp the machine's files: %w", err)
		}
		out = append(out, fileStamp{Path: abs, Size: st.Size(), ModTime: st.ModTime().UTC()})
	}
	return out, nil
}

// rtcFollowsHost is how far QEMU's RTC may be from the host's clock and still be taken to
// follow it (-rtc base=utc): the RTC counts whole seconds, read at an unknown phase.
const rtcFollowsHost = 2 * time.Second

// SetGuestClock steps the guest's system clock to what a cold boot would give it now: the host's
// clock, or, when QEMU's RTC runs elsewhere (-rtc base=<date>), the RTC's time. It asks QEMU for
// the RTC (QMP qom-get rtc-time) and sets the clock through the console (busybox date -s
// @<seconds>); the agent is not asked, since it is what is under test.
//
// Precision: busybox's date takes whole seconds, so the clock lands within half a second of
// the target plus the console's latency. QEMU's RTC itself needs no step: it is computed from
// the host's clock, so after a restore it is already current.
func (v *VM) SetGuestClock(ctx context.Context) error {
	var tm struct {
		Year int `json:"tm_year"`
		Mon  int `json:"tm_mon"`
		Mday int `json:"tm_mday"`
		Hour int `json:"tm_hour"`
		Min  int `json:"tm_min"`
		Sec  int `json:"tm_sec"`
	}
	if err := v.QMP().Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "rtc-time"}, &tm); err != nil {
		return fmt.Errorf("vm: set the guest clock: read the RTC: %w", err)
	}
	host := time.Now()
	rtc := time.Date(tm.Year+1900, time.Month(tm.Mon+1), tm.Mday, tm.Hour, tm.Min, tm.Sec, 0, time.UTC)
	offset := rtc.Sub(host).Round(time.Second)
	if offset.Abs() <= rtcFollowsHost {
		offset = 0
	}
	if err := v.console.WaitReady(ctx); err != nil {
		return fmt.Errorf("vm: set the guest clock: %w", err)
	}
	// Computed as late as possible: the console's first command may have waited.
	target := time.Now().Add(offset)
	secs := int64(math.Round(float64(target.UnixNano()) / 1e9))
	if _, err := v.console.RunOK(ctx, "date -u -s @"+strconv.FormatInt(secs, 10)+" >/dev/null"); err != nil {
		return fmt.Errorf("vm: set the guest clock: %w", err)
	}
	return nil
}
