package specs

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/vm"
)

// vcpu is GuestLogicalProcessor.
type vcpu struct {
	LogicalID  int64 `json:"logical-id"`
	Online     bool  `json:"online"`
	CanOffline bool  `json:"can-offline"`
}

// describeVCPUs adds the specs of guest-get-vcpus and guest-set-vcpus (their guest is in
// time_test.go). The oracles are QEMU's configuration (-smp, and QMP query-cpus-fast, which
// lists the vCPUs QEMU made) and sysfs read on the console: /sys/devices/system/cpu/cpuN/online,
// and the kernel's own summary /sys/devices/system/cpu/online.
func describeVCPUs(g *systemGuest) {
	Describe("vCPUs", func() {
		// Every spec that offlines a CPU puts it back through the console, whatever the agent did.
		onlineAllOnCleanup := func() {
			DeferCleanup(func(ctx SpecContext) {
				_, _, err := g.Console().Run(ctx, "for f in /sys/devices/system/cpu/cpu[0-9]*/online; do echo 1 > $f; done")
				Expect(err).NotTo(HaveOccurred(), "console cleanup")
			}, NodeTimeout(time.Minute))
		}

		It("guest-get-vcpus lists the vCPUs of -smp with the online state sysfs shows on the console", cmdLabel("guest-get-vcpus"), func(ctx SpecContext) {
			guest := g.VM
			By("QEMU's configuration: -smp 2 on the command line, and two vCPUs in QMP query-cpus-fast")
			Expect(strings.Join(guest.CommandLine(), " ")).To(ContainSubstring("-smp " + strconv.Itoa(g.smp)))
			var cpus []map[string]any
			Expect(guest.QMP().Execute(ctx, "query-cpus-fast", nil, &cpus)).To(Succeed())
			Expect(cpus).To(HaveLen(g.smp))

			By("the console's sysfs: cpu0 and cpu1, cpu0 without an online file (it cannot be offlined)")
			want := vcpuSysfs(ctx, guest)
			Expect(want).To(ConsistOf(vcpu{0, true, false}, vcpu{1, true, true}))

			var got []vcpu
			Expect(guest.Agent().Call(ctx, "guest-get-vcpus", nil, &got)).To(Succeed())
			// In readdir order, like the reference: the set is what counts.
			Expect(got).To(ConsistOf(want))
		}, NodeTimeout(2*time.Minute))

		It("guest-set-vcpus takes cpu1 offline and back online, as the console sees", cmdLabel("guest-set-vcpus", "guest-get-vcpus"), func(ctx SpecContext) {
			guest := g.VM
			onlineAllOnCleanup()
			agent := guest.Agent()
			var n int64

			By("offlining cpu1 (can-offline in a request is ignored, as by the reference): 1 processed")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(map[string]any{"logical-id": 1, "online": false, "can-offline": false}), &n)).To(Succeed())
			Expect(n).To(Equal(int64(1)))
			By("the console: cpu1/online is 0 and the kernel lists only cpu0 online")
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/cpu1/online")).To(Equal("0"))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0"))
			By("guest-get-vcpus agrees with the console")
			var got []vcpu
			Expect(agent.Call(ctx, "guest-get-vcpus", nil, &got)).To(Succeed())
			Expect(got).To(ConsistOf(vcpuSysfs(ctx, guest)))
			Expect(got).To(ContainElement(vcpu{1, false, true}))

			By("offlining it again is no change and still counts: 1")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(vcpu{1, false, true}), &n)).To(Succeed())
			Expect(n).To(Equal(int64(1)))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0"))

			By("onlining cpu1: 1 processed, and the console sees both online")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(vcpu{1, true, true}), &n)).To(Succeed())
			Expect(n).To(Equal(int64(1)))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/cpu1/online")).To(Equal("1"))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0-1"))
		}, NodeTimeout(2*time.Minute))

		It("guest-set-vcpus refuses to offline cpu0 or to touch a vCPU that does not exist, with the reference's texts", cmdLabel("guest-set-vcpus"), func(ctx SpecContext) {
			guest := g.VM
			onlineAllOnCleanup()
			agent := guest.Agent()
			var n int64

			By("cpu0 has no online file: offlining it is refused")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(vcpu{0, false, false}), nil)).
				To(MatchAgentError("GenericError", "logical processor #0 can't be offlined"))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0-1"))
			By("onlining cpu0 is no change and counts: 1")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(vcpu{0, true, false}), &n)).To(Succeed())
			Expect(n).To(Equal(int64(1)))

			missing := g.smp + 3
			By(fmt.Sprintf("the console has no cpu%d; the agent cannot open its directory", missing))
			_, rc, err := guest.Console().Run(ctx, fmt.Sprintf("test -e /sys/devices/system/cpu/cpu%d", missing))
			Expect(err).NotTo(HaveOccurred())
			Expect(rc).NotTo(BeZero())
			for _, online := range []bool{false, true} {
				Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(map[string]any{"logical-id": missing, "online": online}), nil)).
					To(MatchAgentError("GenericError", fmt.Sprintf(`open("/sys/devices/system/cpu/cpu%d/"): No such file or directory`, missing)))
			}

			By("an empty list processes nothing: 0")
			Expect(agent.Call(ctx, "guest-set-vcpus", map[string]any{"vcpus": []any{}}, &n)).To(Succeed())
			Expect(n).To(BeZero())
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0-1"))
		}, NodeTimeout(2*time.Minute))

		It("guest-set-vcpus stops at the first failing element: the count so far when it is not the first, the error when it is", cmdLabel("guest-set-vcpus"), func(ctx SpecContext) {
			guest := g.VM
			onlineAllOnCleanup()
			agent := guest.Agent()
			var n int64

			By("[cpu1 offline, cpu0 offline]: 1, and the console shows cpu1's change happened")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(vcpu{1, false, true}, vcpu{0, false, false}), &n)).To(Succeed())
			Expect(n).To(Equal(int64(1)))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0"))

			By("[cpu1 online, a vCPU that does not exist]: 1, and the console shows cpu1 back online")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(vcpu{1, true, true}, vcpu{int64(g.smp) + 3, true, true}), &n)).To(Succeed())
			Expect(n).To(Equal(int64(1)))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0-1"))

			By("[cpu0 offline, cpu1 offline]: the error of the first, and the console shows cpu1 untouched")
			Expect(agent.Call(ctx, "guest-set-vcpus", vcpuArgs(vcpu{0, false, false}, vcpu{1, false, true}), nil)).
				To(MatchAgentError("GenericError", "logical processor #0 can't be offlined"))
			Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0-1"))
		}, NodeTimeout(2*time.Minute))

		It("guest-set-vcpus checks the whole argument before it changes anything, with the reference's texts", cmdLabel("guest-set-vcpus"), func(ctx SpecContext) {
			guest := g.VM
			onlineAllOnCleanup()
			agent := guest.Agent()
			offline1 := map[string]any{"logical-id": 1, "online": false}
			for _, c := range []struct {
				args map[string]any
				desc string
			}{
				{map[string]any{}, "Parameter 'vcpus' is missing"},
				{map[string]any{"vcpus": 1}, "Invalid parameter type for 'vcpus', expected: array"},
				{map[string]any{"vcpus": []any{offline1}, "y": 2}, "Parameter 'y' is unexpected"},
				{vcpuArgs(offline1, 5), "Invalid parameter type for 'vcpus[1]', expected: object"},
				{vcpuArgs(offline1, map[string]any{"logical-id": 0}), "Parameter 'vcpus[1].online' is missing"},
				{vcpuArgs(offline1, map[string]any{"online": true}), "Parameter 'vcpus[1].logical-id' is missing"},
				{vcpuArgs(offline1, map[string]any{"logical-id": "0", "online": true}), "Invalid parameter type for 'vcpus[1].logical-id', expected: integer"},
				{vcpuArgs(offline1, map[string]any{"logical-id": 0, "online": "yes"}), "Invalid parameter type for 'vcpus[1].online', expected: boolean"},
				{vcpuArgs(offline1, map[string]any{"logical-id": 0, "online": true, "can-offline": 1}), "Invalid parameter type for 'vcpus[1].can-offline', expected: boolean"},
				{vcpuArgs(offline1, map[string]any{"logical-id": 0, "online": true, "x": 1}), "Parameter 'vcpus[1].x' is unexpected"},
			} {
				By(fmt.Sprintf("%v: %s, and cpu1, offlined by the valid first element, is still online on the console", c.args, c.desc))
				Expect(agent.Call(ctx, "guest-set-vcpus", c.args, nil)).To(MatchAgentError("GenericError", c.desc))
				Expect(vcpuConsole(ctx, guest, "cat /sys/devices/system/cpu/online")).To(Equal("0-1"))
			}
		}, NodeTimeout(2*time.Minute))
	})
}

// vcpuArgs is guest-set-vcpus' argument object for these elements.
func vcpuArgs(elems ...any) map[string]any { return map[string]any{"vcpus": elems} }

// vcpuConsole runs a command on the console and returns its output without the final newline.
func vcpuConsole(ctx context.Context, guest *vm.VM, cmd string) string {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, cmd)
	Expect(err).NotTo(HaveOccurred())
	return strings.TrimSpace(out)
}

// vcpuSysfs reads every cpuN directory on the console: online is the first byte of its online
// file ("0" is offline), and a vCPU without that file is online and cannot be offlined.
func vcpuSysfs(ctx context.Context, guest *vm.VM) []vcpu {
	GinkgoHelper()
	out := vcpuConsole(ctx, guest, `for d in /sys/devices/system/cpu/cpu[0-9]*; do if [ -e $d/online ]; then echo "${d##*/cpu} $(cat $d/online) 1"; else echo "${d##*/cpu} 1 0"; fi; done`)
	var cpus []vcpu
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		Expect(f).To(HaveLen(3), "console line %q", l)
		id, err := strconv.ParseInt(f[0], 10, 64)
		Expect(err).NotTo(HaveOccurred(), "console line %q", l)
		cpus = append(cpus, vcpu{LogicalID: id, Online: f[1] != "0", CanOffline: f[2] == "1"})
	}
	return cpus
}
