package specs

import (
	"context"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/vm"
)

// guestInfo is guest-info's reply.
type guestInfo struct {
	Version  string `json:"version"`
	Commands []struct {
		Name            string `json:"name"`
		Enabled         bool   `json:"enabled"`
		SuccessResponse bool   `json:"success-response"`
	} `json:"supported_commands"`
}

// noReplyCommands are the schema's commands with 'success-response': false.
var noReplyCommands = []string{"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"}

var _ = Describe("guest-info", cmdLabel("guest-info"), func() {
	It("lists every schema command once, enabled, with the schema's success-response, and the binary's own version", func(ctx SpecContext) {
		guest := bootGuest(ctx)
		var info guestInfo
		Expect(guest.Agent().Call(ctx, "guest-info", nil, &info)).To(Succeed())

		By("every command of the schema is listed exactly once")
		listed := map[string]int{}
		for _, c := range info.Commands {
			listed[c.Name]++
		}
		for _, name := range seeds.CommandNames() {
			Expect(listed[name]).To(Equal(1), "guest-info lists %s %d times", name, listed[name])
		}
		// An agent may implement more than the seed (the reference 7.2 lists 36 commands);
		// conformance is about the seed's 23.

		By("each schema command is enabled, and success-response is false exactly for the no-reply commands (the schema is the oracle)")
		for _, c := range info.Commands {
			if seeds.Command(c.Name) == nil {
				continue
			}
			Expect(c.Enabled).To(BeTrue(), "%s is listed as disabled, but no list disables it", c.Name)
			Expect(c.SuccessResponse).To(Equal(!slices.Contains(noReplyCommands, c.Name)), "success-response of %s", c.Name)
		}

		By("the version is the one the same binary prints with -V (on the host before it was injected; for AGENT=image, on the console)")
		Expect(info.Version).NotTo(BeEmpty())
		Expect(agentVersionLine(ctx, guest)).To(ContainSubstring("QEMU Guest Agent " + info.Version))
	}, SpecTimeout(bootTimeout+time.Minute))

	It("reports and enforces a block list given with -b", cmdLabel("guest-get-time", "guest-ping"), func(ctx SpecContext) {
		By("starting the agent in the guest with -b guest-get-time,guest-ping")
		guest := bootGuest(ctx, withAgentArgs("-b", "guest-get-time,guest-ping"))
		agent := guest.Agent()

		By("the blocked commands get CommandNotFound with the reference's text")
		for _, cmd := range []string{"guest-get-time", "guest-ping"} {
			Expect(agent.Call(ctx, cmd, nil, nil)).To(MatchAgentError("CommandNotFound", "Command "+cmd+" has been disabled"))
		}
		By("a command that is not blocked still runs")
		var t int64
		Expect(agent.Call(ctx, "guest-sync", map[string]any{"id": 5}, &t)).To(Succeed())
		Expect(t).To(Equal(int64(5)))

		By("guest-info shows exactly the blocked ones disabled")
		var info guestInfo
		Expect(agent.Call(ctx, "guest-info", nil, &info)).To(Succeed())
		for _, c := range info.Commands {
			if seeds.Command(c.Name) == nil {
				continue
			}
			blocked := c.Name == "guest-get-time" || c.Name == "guest-ping"
			Expect(c.Enabled).To(Equal(!blocked), "enabled of %s", c.Name)
		}

		By("the console sees the agent running with the -b flag (it is the agent under test that answered)")
		Expect(agentCmdlines(ctx, guest)).To(ContainElement(ContainSubstring("-b guest-get-time,guest-ping")))
	}, SpecTimeout(bootTimeout+time.Minute))
})

// agentVersionLine is the -V line of the agent binary under test: taken on the host when the
// suite prepared it, or, for AGENT=image, whose binary only the guest has, printed by it on the
// console.
func agentVersionLine(ctx context.Context, guest *vm.VM) string {
	GinkgoHelper()
	if env.Version != "" {
		return env.Version
	}
	out, err := guest.Console().RunOK(ctx, agentPath()+" -V")
	Expect(err).NotTo(HaveOccurred())
	return strings.TrimSpace(out)
}
