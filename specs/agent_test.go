package specs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

// These specs check the ground every other spec stands on: the process answering on the port
// is the binary under test, and the channel survives what hosts do to it.
var _ = Describe("the agent channel", Ordered, cmdLabel("guest-sync-delimited", "guest-ping"), func() {
	var guest *vm.VM
	BeforeAll(func(ctx SpecContext) {
		guest = bootGuest(ctx)
	}, NodeTimeout(bootTimeout))

	It("is served by the binary under test, as the console sees it", func(ctx SpecContext) {
		if env.Agent == image.AgentFromImage {
			By("AGENT=image: the binary is the image's package's, unchanged (dpkg -V reports nothing for it)")
			out, err := guest.Console().RunOK(ctx, "dpkg -S "+agentPath())
			Expect(err).NotTo(HaveOccurred())
			Expect(out).To(Equal("qemu-guest-agent: " + agentPath() + "\n"))
			out, _, err = guest.Console().Run(ctx, "dpkg -V qemu-guest-agent")
			Expect(err).NotTo(HaveOccurred())
			Expect(out).NotTo(ContainSubstring(" "+agentPath()+"\n"), "dpkg -V says the image's agent was changed")
		} else {
			By("the binary in the guest has the sha256 AGENT had on the host when it was prepared")
			out, err := guest.Console().RunOK(ctx, "sha256sum "+agentPath())
			Expect(err).NotTo(HaveOccurred())
			Expect(strings.Fields(out)).To(HaveExactElements(env.AgentSHA256, agentPath()))
		}

		By("the console lists it running on the agent port")
		Expect(agentCmdlines(ctx, guest)).To(ContainElement(ContainSubstring("-p /dev/virtio-ports/org.qemu.guest_agent.0")))

		By("killing it from the console: the supervisor restarts it and it answers again")
		mark := guest.SerialMark()
		_, err := guest.Console().RunOK(ctx, "kill -9 $(pidof "+agentProcName()+")")
		Expect(err).NotTo(HaveOccurred())
		_, err = guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentStart))
		Expect(err).NotTo(HaveOccurred())
		Expect(guest.Agent().SyncUntil(ctx, 5*time.Second)).To(Succeed())
		Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
	}, NodeTimeout(2*time.Minute))

	It("is hot-unplugged and re-plugged over QMP, and the agent answers every time", func(ctx SpecContext) {
		for i := range 3 {
			By("device_del and chardev-remove of the port, then chardev-add and device_add again")
			Expect(guest.DetachAgent(ctx)).To(Succeed(), "detach #%d", i)
			agent, err := guest.AttachAgent(ctx)
			Expect(err).NotTo(HaveOccurred(), "attach #%d", i)
			Expect(agent.Call(ctx, "guest-ping", nil, nil)).To(Succeed())
		}
	}, NodeTimeout(3*time.Minute))

	It("answers again after the host closes and reopens its end of the channel", func(ctx SpecContext) {
		agent := guest.Agent()
		for i := range 20 {
			Expect(agent.Reconnect(ctx)).To(Succeed(), "reconnect #%d", i)
			var id int64
			Expect(agent.Call(ctx, "guest-sync", map[string]any{"id": i}, &id)).To(Succeed())
			Expect(id).To(Equal(int64(i)))
		}
	}, NodeTimeout(3*time.Minute))
})

// agentCmdlines lists, through the console, the command lines of the processes running the
// agent binary under test.
func agentCmdlines(ctx context.Context, guest *vm.VM) []string {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, `for p in /proc/[0-9]*; do c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null); case "$c" in `+agentPath()+`*) echo "$c";; esac; done`)
	Expect(err).NotTo(HaveOccurred())
	return strings.Split(strings.TrimSpace(out), "\n")
}

// fileSHA256 is the hex sha256 of a host file.
func fileSHA256(path string) string {
	GinkgoHelper()
	b, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
