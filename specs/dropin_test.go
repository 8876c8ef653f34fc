package specs

import (
	"context"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/agent/dist"
	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

// The drop-in promise (issue 11): installed as /usr/sbin/qemu-ga, the agent under test runs from
// Debian's own qemu-guest-agent.service and udev rule, neither of them touched. The oracles are
// the guest's package manager (dpkg -V checks every file of the package against the checksums
// the package shipped), systemd's own account of the unit (which file it loaded, which
// drop-ins, which process is its main one), /proc (that process's binary and its sha256), and
// QMP (the port the host plugs and unplugs).
var _ = Describe("the agent as a drop-in for Debian's qemu-guest-agent", Label("dropin"), cmdLabel("guest-info"), func() {
	It("runs as /usr/sbin/qemu-ga from Debian's unchanged unit, which the port's udev rule starts and stops", func(ctx SpecContext) {
		if !onImage(image.ProfileDebianCloud) {
			Skip("needs Debian's qemu-guest-agent package and systemd in the guest: IMAGE=debian-cloud")
		}
		if env.Agent == image.AgentFromImage {
			Skip("AGENT=image runs the image's own qemu-ga: there is no other binary to drop in")
		}
		guest := bootGuest(ctx)
		con := guest.Console()

		By("console: dpkg -V finds every file of qemu-guest-agent as the package shipped it (the image leaves documentation out, which dpkg lists as missing)")
		Expect(dpkgVerify(ctx, guest)).To(BeEmpty())
		shipped := consoleSHA256(ctx, guest, dist.AgentPath)

		By("console: the unit and the udev rule on the guest say what agent/dist's copies say, comments aside")
		out, err := con.RunOK(ctx, "cat "+dist.UnitPath)
		Expect(err).NotTo(HaveOccurred())
		Expect(configDirectives(out)).To(Equal(configDirectives(dist.Unit)))
		out, err = con.RunOK(ctx, "cat "+dist.UdevRulePath)
		Expect(err).NotTo(HaveOccurred())
		Expect(configDirectives(out)).To(Equal(configDirectives(dist.UdevRule)))

		By("console: stopping the seed's supervisor, the harness's own way to run the agent, so that no agent runs")
		_, err = con.RunOK(ctx, "systemctl stop qgakit-agent.service")
		Expect(err).NotTo(HaveOccurred())
		Expect(consolePids(ctx, guest, agentProcName())).To(BeEmpty())
		Expect(consolePids(ctx, guest, "qemu-ga")).To(BeEmpty())

		By("console: installing the binary under test (the seed carried it to " + image.CloudAgentPath + ") as " + dist.AgentPath + ", a new name and a rename, as dpkg replaces a file")
		_, err = con.RunOK(ctx, "cp "+image.CloudAgentPath+" "+dist.AgentPath+".qgakit-new && mv -f "+dist.AgentPath+".qgakit-new "+dist.AgentPath)
		Expect(err).NotTo(HaveOccurred())
		Expect(consoleSHA256(ctx, guest, dist.AgentPath)).To(Equal(env.AgentSHA256))

		if env.AgentSHA256 == shipped {
			By("console: dpkg -V still finds nothing changed (the binary under test is the one Debian ships)")
			Expect(dpkgVerify(ctx, guest)).To(BeEmpty())
		} else {
			By("console: dpkg -V finds exactly one file changed, the binary, by its checksum: the unit and the rule are Debian's")
			changed := dpkgVerify(ctx, guest)
			Expect(changed).To(HaveLen(1), "dpkg -V: %v", changed)
			Expect(changed).To(HaveKeyWithValue(dist.AgentPath, HaveLen(9)))
			Expect(changed[dist.AgentPath][2]).To(Equal(byte('5')), "dpkg -V flags %q: the checksum must differ", changed[dist.AgentPath])
		}

		By("console: unmasking Debian's unit (the seed masked it in /run, for this boot) and starting it")
		_, err = con.RunOK(ctx, "systemctl unmask --runtime "+dist.UnitName+" && systemctl start "+dist.UnitName)
		Expect(err).NotTo(HaveOccurred())
		pid := expectUnitRunsAgent(ctx, guest)

		By("the agent answers on the port, and guest-info's version is the binary under test's")
		Expect(guest.Agent().SyncUntil(ctx, 5*time.Second)).To(Succeed())
		var info guestInfo
		Expect(guest.Agent().Call(ctx, "guest-info", nil, &info)).To(Succeed())
		Expect(info.Version).NotTo(BeEmpty())
		Expect(agentVersionLine(ctx, guest)).To(ContainSubstring("QEMU Guest Agent " + info.Version))

		By("QMP: hot-unplugging the port; console: systemd stops the unit (it is bound to the port's device) and no agent runs")
		Expect(guest.DetachAgent(ctx)).To(Succeed())
		Eventually(ctx, func() string {
			out, _, _ := con.Run(ctx, "systemctl is-active "+dist.UnitName)
			return strings.TrimSpace(out)
		}).WithPolling(500 * time.Millisecond).Should(Equal("inactive"))
		Expect(consolePids(ctx, guest, "qemu-ga")).To(BeEmpty())

		By("QMP: plugging it again; console: udev's rule starts the unit, a new process of the same binary, and it answers")
		_, err = guest.AttachAgent(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(expectUnitRunsAgent(ctx, guest)).NotTo(Equal(pid))
		Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
	}, SpecTimeout(bootTimeout+3*time.Minute))
})

// expectUnitRunsAgent checks, on the console, that systemd runs Debian's unit from the
// package's file without drop-ins, and that its main process is /usr/sbin/qemu-ga without
// arguments, with the binary under test's sha256; it returns that process's pid.
func expectUnitRunsAgent(ctx context.Context, guest *vm.VM) string {
	GinkgoHelper()
	By("console: systemd loaded the unit from the package's file, with no drop-in, and it is active")
	var show map[string]string
	Eventually(ctx, func() map[string]string {
		out, _, _ := guest.Console().Run(ctx, "systemctl show -p FragmentPath,DropInPaths,ActiveState,SubState,MainPID "+dist.UnitName)
		show = map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				show[k] = v
			}
		}
		return show
	}).WithPolling(500 * time.Millisecond).Should(And(HaveKeyWithValue("SubState", "running"), HaveKeyWithValue("MainPID", Not(Equal("0")))))
	// Merged /usr: the same file under either name, whichever systemd searched first.
	Expect(show["FragmentPath"]).To(BeElementOf(dist.UnitPath, "/usr"+dist.UnitPath))
	Expect(show["DropInPaths"]).To(BeEmpty())
	Expect(show["ActiveState"]).To(Equal("active"))
	pid := show["MainPID"]

	By("console: the unit's main process runs " + dist.AgentPath + " without arguments, with the sha256 of the binary under test")
	out, err := guest.Console().RunOK(ctx, "readlink /proc/"+pid+"/exe; tr '\\0' ' ' < /proc/"+pid+"/cmdline; echo; sha256sum < /proc/"+pid+"/exe")
	Expect(err).NotTo(HaveOccurred())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	Expect(lines).To(HaveLen(3), "console: %q", out)
	Expect(lines[0]).To(Equal(dist.AgentPath))
	Expect(strings.TrimSpace(lines[1])).To(Equal(dist.AgentPath))
	Expect(strings.Fields(lines[2])).To(HaveExactElements(env.AgentSHA256, "-"))
	return pid
}

// dpkgVerify runs dpkg -V qemu-guest-agent on the console and returns the files it reports
// changed, with their flags ("??5??????" for a file whose checksum differs). Files it reports
// missing must be documentation (the image excludes /usr/share/doc and /usr/share/man); any
// other missing file fails the spec.
func dpkgVerify(ctx context.Context, guest *vm.VM) map[string]string {
	GinkgoHelper()
	out, _, err := guest.Console().Run(ctx, "dpkg -V qemu-guest-agent")
	Expect(err).NotTo(HaveOccurred())
	changed := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == "missing":
			Expect(f[len(f)-1]).To(Or(HavePrefix("/usr/share/doc/"), HavePrefix("/usr/share/man/")), "dpkg -V: %q", line)
		default:
			// "FLAGS [c] PATH"; c marks a configuration file.
			Expect(len(f)).To(BeNumerically(">=", 2), "dpkg -V: %q", line)
			changed[f[len(f)-1]] = f[0]
		}
	}
	return changed
}

// consoleSHA256 is the sha256 of a guest file, by the console's sha256sum.
func consoleSHA256(ctx context.Context, guest *vm.VM, path string) string {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, "sha256sum "+path)
	Expect(err).NotTo(HaveOccurred())
	f := strings.Fields(out)
	Expect(f).To(HaveExactElements(HaveLen(64), path))
	return f[0]
}

// consolePids are the pids pidof finds for a process name in the guest.
func consolePids(ctx context.Context, guest *vm.VM, name string) []string {
	GinkgoHelper()
	out, _, err := guest.Console().Run(ctx, "pidof "+name)
	Expect(err).NotTo(HaveOccurred())
	return strings.Fields(out)
}

// configDirectives are the lines of a unit file or udev rule that say something: without
// comments, blank lines and surrounding blanks, in order.
func configDirectives(text string) []string {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";") {
			continue
		}
		lines = append(lines, l)
	}
	return lines
}
