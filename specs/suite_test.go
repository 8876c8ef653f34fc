// Package specs is the conformance suite: Ginkgo specs that boot QEMU VMs, inject the agent
// under test, and check each command through oracles that do not trust the agent (QMP, the
// console shell, the disk images as the host sees them, QEMU's own configuration).
//
// Run it with `make e2e` (AGENT=, IMAGE=, LABELS=, PROCS=). Every spec carries
// Label("cmd:<command>") for the commands it checks.
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
	Agent string // the agent binary under test, on the host
	// AgentSHA256 is the digest of Agent when it was injected: a rebuild during the run must not
	// make the guest's copy look foreign.
	AgentSHA256 string
	// Version is the agent's -V line.
	Version string
	// Reference is set for a qemu-ga (the reference family), as opposed to qgakit's agent, whose
	// version always names the project.
	Reference bool
	ImageDir  string // the built tiny image in the cache
	Initrd    string // the tiny initramfs with the agent injected
	TmpDir    string // the suite's scratch dir, removed after the suite
}

var (
	env   suite
	tiny  *image.Tiny
	seeds = schema.MustLoad()
)

// agentUnderTest resolves AGENT (default: bin/qga of this checkout, which `make e2e` builds).
func agentUnderTest() (string, error) {
	agent := os.Getenv("AGENT")
	if agent == "" {
		agent = filepath.Join("..", "bin", "qga")
	}
	abs, err := filepath.Abs(agent)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("AGENT=%s: %w (run `make agent`, or set AGENT to a qemu-ga binary)", agent, err)
	}
	if st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("AGENT=%s is not executable", agent)
	}
	return abs, nil
}

var _ = SynchronizedBeforeSuite(func(ctx SpecContext) []byte {
	if img := os.Getenv("IMAGE"); img != "" && img != "tiny" {
		Fail(fmt.Sprintf("IMAGE=%s: this suite knows the tiny image only", img))
	}
	agent, err := agentUnderTest()
	Expect(err).NotTo(HaveOccurred())

	By("building the tiny image (cached after the first run)")
	t, err := image.BuildTiny(ctx, GinkgoWriter)
	Expect(err).NotTo(HaveOccurred())

	tmp, err := os.MkdirTemp("", "qgakit-suite-")
	Expect(err).NotTo(HaveOccurred())
	By("injecting " + agent + " into the initramfs")
	initrd := filepath.Join(tmp, "initrd-agent")
	Expect(t.InjectAgent(ctx, agent, initrd)).To(Succeed())

	out, err := exec.CommandContext(ctx, agent, "-V").CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "%s -V: %s", agent, out)
	version := strings.TrimSpace(string(out))

	b, err := json.Marshal(suite{
		Agent: agent, AgentSHA256: fileSHA256(agent), Version: version,
		Reference: !strings.Contains(version, "qgakit"),
		ImageDir:  t.Dir, Initrd: initrd, TmpDir: tmp,
	})
	Expect(err).NotTo(HaveOccurred())
	return b
}, func(b []byte) {
	Expect(json.Unmarshal(b, &env)).To(Succeed())
	var err error
	tiny, err = image.LoadTiny(env.ImageDir)
	Expect(err).NotTo(HaveOccurred())
	fmt.Fprintf(GinkgoWriter, "agent under test: %s (%s; reference family: %v)\n", env.Agent, env.Version, env.Reference)
	// Every process describes the same machine, so they share one saved state (SaveOnce).
	defaultTemplate = vm.NewTemplate(filepath.Join(env.TmpDir, "template-default"), tinyVMOptions(guestConfig{})...)
}, NodeTimeout(15*time.Minute))

var _ = SynchronizedAfterSuite(func() {
	vm.CloseAll()
}, func() {
	if env.TmpDir != "" {
		os.RemoveAll(env.TmpDir)
	}
})

// bootTimeout bounds a boot up to the agent answering. Under TCG that is about 5 s on a quiet
// machine; parallel processes and a loaded CI host stretch it.
const bootTimeout = 2 * time.Minute

// guestConfig is what a spec may change about the VM it boots.
type guestConfig struct {
	tiny image.TinyOptions
	vm   []vm.Option
	// shaped is set by every option that changes the machine or its boot, which the saved
	// default state cannot have.
	shaped bool
	cold   bool
}

// defaultTemplate is the default guest (no options) booted once and saved; bootGuest restores
// it for specs that need nothing else, in about a tenth of a cold boot.
var defaultTemplate *vm.Template

// coldBootAlways makes every guest boot cold (COLDBOOT=1), to rule snapshots out when a spec
// misbehaves or to measure the difference.
var coldBootAlways = os.Getenv("COLDBOOT") == "1"

// guestOption changes a guestConfig.
type guestOption func(*guestConfig)

// withAgentArgs starts the agent in the guest with extra command-line arguments.
func withAgentArgs(args ...string) guestOption {
	return func(c *guestConfig) { c.tiny.AgentArgs, c.shaped = append(c.tiny.AgentArgs, args...), true }
}

// withVM passes options to the VM.
func withVM(opts ...vm.Option) guestOption {
	return func(c *guestConfig) { c.vm, c.shaped = append(c.vm, opts...), true }
}

// withTiny changes the tiny image's boot options.
func withTiny(f func(*image.TinyOptions)) guestOption {
	return func(c *guestConfig) { f(&c.tiny); c.shaped = true }
}

// withColdBoot boots the guest from scratch even when the saved default state would do: for
// specs about what happens at boot.
func withColdBoot() guestOption { return func(c *guestConfig) { c.cold = true } }

// tinyVMOptions are the VM options of a tiny guest with the agent under test.
func tinyVMOptions(c guestConfig) []vm.Option {
	return append([]vm.Option{vm.WithKernel(tiny.Kernel, env.Initrd, tiny.Cmdline(c.tiny))}, c.vm...)
}

// bootGuest starts a tiny guest with the agent under test, attaches the agent's channel and
// synchronises with it. A guest without options is restored from the saved default state (the
// clock set back to the host's by the console, fresh disk overlays); any option, withColdBoot or
// COLDBOOT=1 boots it cold. The VM is closed (and its artifacts kept when the spec failed) by
// DeferCleanup.
func bootGuest(ctx context.Context, opts ...guestOption) *vm.VM {
	GinkgoHelper()
	var c guestConfig
	for _, o := range opts {
		o(&c)
	}
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	if !c.shaped && !c.cold && !coldBootAlways {
		By("restoring the saved default guest (booted and saved once per run)")
		Expect(defaultTemplate.SaveOnce(bootCtx, readyToSave)).To(Succeed(), "save the default guest")
		return defaultTemplate.RestoreT(GinkgoT(), bootCtx, vm.RestoreAgent())
	}
	v := vm.StartT(GinkgoT(), bootCtx, tinyVMOptions(c)...)
	_, err := v.WaitSerial(bootCtx, "TINY: READY")
	Expect(err).NotTo(HaveOccurred(), "the guest did not reach TINY: READY")
	_, err = v.AttachAgent(bootCtx)
	Expect(err).NotTo(HaveOccurred(), "attach the agent channel")
	return v
}

// readyToSave is when a booted default guest may be saved: init is done (late modules
// included, so a clone never sees them load), and the console shell answers.
func readyToSave(ctx context.Context, v *vm.VM) error {
	for _, line := range []string{"TINY: READY", "TINY: late-modules-loaded"} {
		if _, err := v.WaitSerial(ctx, line); err != nil {
			return fmt.Errorf("wait for %q: %w", line, err)
		}
	}
	_, err := v.Console().RunOK(ctx, "true")
	return err
}

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
