// Package specs is the conformance suite: Ginkgo specs that boot QEMU VMs, inject the agent
// under test, and check each command through oracles that do not trust the agent (QMP, the
// console shell, the disk images as the host sees them, QEMU's own configuration).
//
// Run it with `make e2e` (AGENT=, IMAGE=, LABELS=, PROCS=). Every spec carries
// Label("cmd:<command>") for the commands it checks. IMAGE= picks the image profile
// (harness/image: tiny by default, debian-cloud, url:, file:); the specs see the guest only
// through the profile's contract (ready and agent markers on ttyS0, a root shell on ttyS1, data
// disks vda, vdb, ... mounted on /mnt/<name>, the agent's path), and a spec that needs what
// only one image has skips elsewhere and says what is missing.
package specs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
	"github.com/qgakit/qgakit/schema"
)

func TestSpecs(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "qgakit conformance")
}

// suite is what SynchronizedBeforeSuite prepares once and hands to every process.
type suite struct {
	// Agent is the agent binary under test on the host, or image.AgentFromImage (AGENT=image:
	// the image's own qemu-ga).
	Agent string
	// AgentSHA256 is the digest of Agent when it was prepared: a rebuild during the run must not
	// make the guest's copy look foreign. Empty for AGENT=image.
	AgentSHA256 string
	// Version is the agent's -V line, taken on the host; empty for AGENT=image, whose binary
	// only the guest has (agentVersionLine asks it there).
	Version string
	// Reference is set for a qemu-ga (the reference family), as opposed to qgakit's agent, whose
	// version always names the project. AGENT=image is Debian's qemu-ga: the reference.
	Reference bool
	// Image is the prepared image: the profile, its boot files and the agent it carries.
	Image  *image.Prepared
	TmpDir string // the suite's scratch dir, removed after the suite
}

var (
	env   suite
	seeds = schema.MustLoad()
)

// suiteImage is IMAGE as the spec tree is built. Node timeouts are fixed then, before the
// suite has prepared anything, so the few that depend on the image read it from here.
var suiteImage = image.ConfigFromEnv().Image

// suiteOnTiny reports whether the run is on the tiny image (IMAGE empty or tiny).
func suiteOnTiny() bool { return suiteImage == "" || suiteImage == image.ProfileTiny }

// bootTimeout bounds a boot up to the agent answering, including the save of the default guest
// that the first restore of a run waits for. A tiny guest gets there in about 5 s under TCG on
// a quiet machine; a cloud guest (systemd, udev, cloud-init's Python) in 30-40 s quiet and in
// minutes on a loaded host (image.Guest.BootTimeout says 6), plus the save.
var bootTimeout = func() time.Duration {
	if suiteOnTiny() {
		return 2 * time.Minute
	}
	return 8 * time.Minute
}()

// An Ordered container whose BeforeAll boots the guest its specs share bounds its specs with
// NodeTimeout, not SpecTimeout: a spec's timeout also covers the BeforeAll that runs as part of
// the container's first spec, and a cloud guest's boot takes longer than any of those specs.

// prepareTimeout bounds SynchronizedBeforeSuite: a tiny image builds in seconds, a debian-cloud
// one takes minutes (mmdebstrap) when it is not in the cache yet.
var prepareTimeout = func() time.Duration {
	if suiteOnTiny() {
		return 15 * time.Minute
	}
	return 60 * time.Minute
}()

// agentUnderTest resolves AGENT (default: bin/qga of this checkout, which `make e2e` builds);
// AGENT=image stays the word.
func agentUnderTest() (string, error) {
	agent := os.Getenv("AGENT")
	if agent == image.AgentFromImage {
		return agent, nil
	}
	if agent == "" {
		agent = filepath.Join("..", "bin", "qga")
	}
	abs, err := filepath.Abs(agent)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("AGENT=%s: %w (run `make agent`, or set AGENT to a qemu-ga binary, or to image on a cloud image)", agent, err)
	}
	if st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("AGENT=%s is not executable", agent)
	}
	return abs, nil
}

var _ = SynchronizedBeforeSuite(func(ctx SpecContext) []byte {
	agent, err := agentUnderTest()
	Expect(err).NotTo(HaveOccurred())
	tmp, err := os.MkdirTemp("", "qgakit-suite-")
	Expect(err).NotTo(HaveOccurred())
	suiteTmp = tmp

	s := suite{Agent: agent, TmpDir: tmp, Reference: true}
	if agent != image.AgentFromImage {
		// The digest and the version come from the binary as it is now, before Prepare copies
		// or injects it: the same bytes.
		s.AgentSHA256 = fileSHA256(agent)
		out, err := exec.CommandContext(ctx, agent, "-V").CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s -V: %s", agent, out)
		s.Version = strings.TrimSpace(string(out))
		s.Reference = !strings.Contains(s.Version, "qgakit")
	}

	c := image.ConfigFromEnv()
	c.Agent, c.Dir, c.Progress = agent, filepath.Join(tmp, "image"), GinkgoWriter
	By(fmt.Sprintf("preparing IMAGE=%s with AGENT=%s (images are cached after the first build)", c.Image, agent))
	s.Image, err = image.Prepare(ctx, c)
	Expect(err).NotTo(HaveOccurred())

	b, err := json.Marshal(s)
	Expect(err).NotTo(HaveOccurred())
	return b
}, func(ctx SpecContext, b []byte) {
	Expect(json.Unmarshal(b, &env)).To(Succeed())
	fmt.Fprintf(GinkgoWriter, "image %s (%s); agent under test: %s (%s; reference family: %v)\n",
		env.Image.Profile, env.Image.Image, env.Agent, env.Version, env.Reference)
	// Every process describes the same machine, so they share one saved state (SaveOnce).
	defaultTemplate = vm.NewTemplate(filepath.Join(env.TmpDir, "template-default"), guestVMOptions(ctx, guestConfig{})...)
}, NodeTimeout(prepareTimeout))

// suiteTmp is the suite's scratch dir as process 1 made it: an interrupt during the setup can
// come before env is filled in, and the dir must go all the same.
var suiteTmp string

var _ = SynchronizedAfterSuite(func() {
	vm.CloseAll()
}, func() {
	for _, dir := range []string{env.TmpDir, suiteTmp} {
		if dir != "" {
			Expect(os.RemoveAll(dir)).To(Succeed())
		}
	}
})

// guestConfig is what a spec may change about the VM it boots.
type guestConfig struct {
	// guest are the profile-neutral boot choices (agent arguments, mounts, swap, resume, kernel
	// arguments).
	guest image.GuestOptions
	// vm are options for the machine; the spec's data disks among them come before the
	// profile's own disks, so they are vda, vdb, ... on every image.
	vm []vm.Option
	// persistDir, when set, holds the overlays of the profile's own disks (a cloud image's
	// root), so that a second QEMU boots the disk the first one left.
	persistDir string
	// shaped is set by every option that changes the machine or its boot, which the saved
	// default state cannot have.
	shaped bool
}

// defaultTemplate is the default guest (no options) booted once and saved; bootGuest restores
// it for specs that need nothing else, in a fraction of a cold boot (a tenth for tiny, a
// twentieth for a cloud image).
var defaultTemplate *vm.Template

// coldBootAlways makes every guest boot cold (COLDBOOT=1), to rule snapshots out when a spec
// misbehaves or to measure the difference.
var coldBootAlways = os.Getenv("COLDBOOT") == "1"

// guestOption changes a guestConfig.
type guestOption func(*guestConfig)

// withAgentArgs starts the agent in the guest with extra command-line arguments.
func withAgentArgs(args ...string) guestOption {
	return func(c *guestConfig) { c.guest.AgentArgs, c.shaped = append(c.guest.AgentArgs, args...), true }
}

// withMounts has the guest mount each of these data disks (vda, vdb, ...) on /mnt/<name>
// before it reports ready.
func withMounts(disks ...string) guestOption {
	return func(c *guestConfig) { c.guest.Mounts, c.shaped = append(c.guest.Mounts, disks...), true }
}

// withSwap has the guest enable this data disk as swap before it reports ready.
func withSwap(disk string) guestOption {
	return func(c *guestConfig) { c.guest.Swap, c.shaped = disk, true }
}

// withResume has the guest's kernel resume from a hibernation image on this data disk
// (resume=); it needs a profile that boots its kernel directly.
func withResume(disk string) guestOption {
	return func(c *guestConfig) { c.guest.Resume, c.shaped = disk, true }
}

// withKernelArgs appends kernel arguments (a profile that boots its kernel directly only).
func withKernelArgs(args ...string) guestOption {
	return func(c *guestConfig) { c.guest.Extra, c.shaped = append(c.guest.Extra, args...), true }
}

// withPersistentDisks keeps the overlays of the profile's own disks in dir instead of the VM's
// temp dir, so that they outlive the VM: the next boot with the same dir boots what the last
// one left (a resume from hibernation). The tiny profile has no disks of its own.
func withPersistentDisks(dir string) guestOption {
	return func(c *guestConfig) { c.persistDir, c.shaped = dir, true }
}

// withVM passes options to the VM.
func withVM(opts ...vm.Option) guestOption {
	return func(c *guestConfig) { c.vm, c.shaped = append(c.vm, opts...), true }
}

// guestVMOptions maps the profile's Guest for c onto harness/vm options: the kernel, the
// profile's memory and CPU, then the spec's options (its data disks first among the disks, and
// any override of memory), then the profile's own disks (a cloud image's root and seed, found
// by label in the guest).
func guestVMOptions(ctx context.Context, c guestConfig) []vm.Option {
	GinkgoHelper()
	g, err := env.Image.Guest(ctx, c.guest)
	Expect(err).NotTo(HaveOccurred(), "IMAGE=%s cannot boot %+v", env.Image.Image, c.guest)
	opts, disks := vm.GuestOptions(g)
	opts = append(opts, c.vm...)
	for _, disk := range disks {
		if c.persistDir != "" && disk.Overlay {
			disk = persistentOverlay(ctx, c.persistDir, disk)
		}
		opts = append(opts, vm.WithDisk(disk))
	}
	return opts
}

// persistentOverlay returns d as a qcow2 overlay in dir (named after its node), creating it on
// first use, so that every VM booted with the same dir writes the same overlay.
func persistentOverlay(ctx context.Context, dir string, d vm.Disk) vm.Disk {
	GinkgoHelper()
	path := filepath.Join(dir, d.Node+".qcow2")
	if _, err := os.Stat(path); err != nil {
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", d.Format, "-b", d.Path, path).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "qemu-img create an overlay of %s: %s", d.Path, out)
	}
	d.Path, d.Format, d.Overlay = path, "qcow2", false
	return d
}

// bootGuest starts a guest of the image under test with the agent under test, attaches the
// agent's channel and synchronises with it. A guest without options is restored from the saved
// default state (the clock set back to the host's by the console, fresh disk overlays); any
// option or COLDBOOT=1 boots it cold. The VM is closed (and its artifacts kept
// when the spec failed) by DeferCleanup.
func bootGuest(ctx context.Context, opts ...guestOption) *vm.VM {
	GinkgoHelper()
	var c guestConfig
	for _, o := range opts {
		o(&c)
	}
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	if !c.shaped && !coldBootAlways {
		By("restoring the saved default guest (booted and saved once per run)")
		Expect(defaultTemplate.SaveOnce(bootCtx, readyToSave)).To(Succeed(), "save the default guest")
		return defaultTemplate.RestoreT(GinkgoT(), bootCtx, vm.RestoreAgent())
	}
	By(fmt.Sprintf("booting a %s guest cold", env.Image.Profile))
	v := vm.StartT(GinkgoT(), bootCtx, guestVMOptions(bootCtx, c)...)
	_, err := v.WaitSerial(bootCtx, marker(image.EventReady))
	Expect(err).NotTo(HaveOccurred(), "the guest did not reach %s", marker(image.EventReady))
	_, err = v.AttachAgent(bootCtx)
	Expect(err).NotTo(HaveOccurred(), "attach the agent channel")
	// A restored guest was saved with its boot finished; a cold one must be there too before
	// the spec starts (on debian-cloud, the reference's guest-shutdown fails while logind is
	// not up yet).
	Expect(waitBootFinished(bootCtx, v)).To(Succeed())
	return v
}

// waitBootFinished waits, on the console, until the guest's init has nothing left to start:
// at once on the tiny image (its /init is done at the ready marker), until systemd says
// running or degraded on a cloud image. It is bounded in the guest, so that a unit that never
// settles cannot leave the console busy.
func waitBootFinished(ctx context.Context, v *vm.VM) error {
	if env.Image.Profile == image.ProfileTiny {
		return nil
	}
	out, _, err := v.Console().Run(ctx, "timeout 180 systemctl is-system-running --wait")
	if err != nil {
		return fmt.Errorf("wait for systemd to finish the boot: %w", err)
	}
	fmt.Fprintf(GinkgoWriter, "systemd: %s", out)
	return nil
}

// readyToSave is when a booted default guest may be saved: init is done (the tiny image's late
// modules loaded, a systemd guest's boot finished), so a clone never spends its time on it, and
// the console shell answers; and the agent is attached and answering, so that every clone's
// agent answers as soon as it runs (harness/vm's Template plugs the port before the load).
func readyToSave(ctx context.Context, v *vm.VM) error {
	if _, err := v.WaitSerial(ctx, marker(image.EventReady)); err != nil {
		return fmt.Errorf("wait for %q: %w", marker(image.EventReady), err)
	}
	if env.Image.Profile == image.ProfileTiny {
		if _, err := v.WaitSerial(ctx, "TINY: late-modules-loaded"); err != nil {
			return fmt.Errorf("wait for the late modules: %w", err)
		}
	}
	if err := v.Console().WaitReady(ctx); err != nil {
		return err
	}
	if err := waitBootFinished(ctx, v); err != nil {
		return err
	}
	if _, err := v.Console().RunOK(ctx, "true"); err != nil {
		return err
	}
	_, err := v.AttachAgent(ctx)
	return err
}

// marker is the ttyS0 line by which the image under test reports event (image.Event*).
func marker(event string) string { return env.Image.Marker(event) }

// agentPath is the agent's path in the guest, as its process list shows it.
func agentPath() string { return env.Image.AgentPath() }

// agentProcName is the agent's process name in the guest (pidof's argument).
func agentProcName() string { return filepath.Base(agentPath()) }

// onImage reports whether the image under test is this profile (image.Profile*).
func onImage(profile string) bool { return env.Image.Profile == profile }

// cmdLabel is the label every spec of a command carries. It refuses names the schema lacks, so
// a typo cannot leave a command uncovered while the coverage report counts it.
func cmdLabel(commands ...string) Labels {
	labels := make(Labels, len(commands))
	for i, c := range commands {
		if seeds.Command(c) == nil {
			panic(fmt.Sprintf("cmdLabel: no command %q in the schema", c))
		}
		labels[i] = "cmd:" + c
	}
	return labels
}

// isReference reports whether the agent under test is a qemu-ga rather than qgakit's agent. Specs
// consult it only where the project chose to do better than the reference 7.2, to check each
// agent's own documented behaviour: never to let either pass silently.
func isReference() bool { return env.Reference }
