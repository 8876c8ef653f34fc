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
}

// guestOption changes a guestConfig.
type guestOption func(*guestConfig)

// withAgentArgs starts the agent in the guest with extra command-line arguments.
func withAgentArgs(args ...string) guestOption {
	return func(c *guestConfig) { c.tiny.AgentArgs = append(c.tiny.AgentArgs, args...) }
}

// withVM passes options to the VM.
func withVM(opts ...vm.Option) guestOption {
	return func(c *guestConfig) { c.vm = append(c.vm, opts...) }
}

// withTiny changes the tiny image's boot options.
func withTiny(f func(*image.TinyOptions)) guestOption {
	return func(c *guestConfig) { f(&c.tiny) }
}

// bootGuest boots a tiny guest with the agent under test, attaches the agent's channel and
// synchronises with it. The VM is closed (and its artifacts kept when
// the spec failed) by DeferCleanup.
func bootGuest(ctx context.Context, opts ...guestOption) *vm.VM {
	GinkgoHelper()
	var c guestConfig
	for _, o := range opts {
		o(&c)
	}
	vmOpts := append([]vm.Option{vm.WithKernel(tiny.Kernel, env.Initrd, tiny.Cmdline(c.tiny))}, c.vm...)
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	v := vm.StartT(GinkgoT(), bootCtx, vmOpts...)
	_, err := v.WaitSerial(bootCtx, "TINY: READY")
	Expect(err).NotTo(HaveOccurred(), "the guest did not reach TINY: READY")
	_, err = v.AttachAgent(bootCtx)
	Expect(err).NotTo(HaveOccurred(), "attach the agent channel")
	return v
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
