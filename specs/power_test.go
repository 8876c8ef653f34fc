package specs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/qmp"
	"github.com/qgakit/qgakit/harness/vm"
)

// The power commands answer nothing when they work, so the agent's silence proves nothing:
// every effect is proven by what QEMU reports (SHUTDOWN, RESET, SUSPEND, SUSPEND_DISK, WAKEUP,
// query-status, the process exiting), by the guest's console (a token kept in tmpfs, the
// kernel's boot_id and uptime) and by the guest's own serial log (the image's shutdown marker,
// marker(image.EventShutdown(mode)): the tiny image's shutdown program prints it, a cloud
// image's systemd-shutdown hook does after every service stopped; the kernel's "System
// halted"). Each spec changes its guest for good, so each boots its own.
//
// On an image with systemd both agents hand every power command to systemctl, as the reference
// does; the specs about how an agent itself drives /sys/power need a guest without systemd or
// pm-utils, which only the tiny image is.

// powerQuietWindow is how long a spec watches for an event that must not come (a SHUTDOWN after
// a refused or halting request). The events that do come arrive within about 2 s of the request
// under TCG (architecture.md, "Power"), so a quiet window several times that long catches an
// agent that acts late instead of refusing.
const powerQuietWindow = 6 * time.Second

// refusalWindow is how long CallNoReply waits for the error of a request that must be refused.
// A refusal can come only after the kernel tried and gave up: the reference's guest-suspend-disk
// without swap freezes every task and snapshots the memory before its child's write fails,
// several seconds under TCG. CallNoReply returns as soon as the error arrives.
const refusalWindow = time.Minute

// powerSpecTimeout bounds a spec with one boot (a reboot is a second one); hibernation specs
// boot twice and write the guest's memory to disk.
var (
	powerSpecTimeout     = bootTimeout + 2*time.Minute
	rebootSpecTimeout    = 2*bootTimeout + 2*time.Minute
	hibernateSpecTimeout = 2*bootTimeout + 4*time.Minute
)

// tokenPath is a file in the guest's /run, a tmpfs: it survives suspend to RAM and a resume
// from a hibernation image, and nothing else (a reboot or a cold boot starts with an empty
// /run).
const tokenPath = "/run/qgakit-power-token"

var _ = Describe("guest-shutdown", Label("destructive", "shutdown"), cmdLabel("guest-shutdown"), func() {
	It("powers the guest off with mode powerdown: SHUTDOWN from the guest, and QEMU exits 0", func(ctx SpecContext) {
		guest := bootGuest(ctx)
		mark, serial := guest.QMP().Mark(), guest.SerialMark()

		By(`guest-shutdown {"mode": "powerdown"} sends no reply`)
		Expect(guest.Agent().CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "powerdown"}, 0)).To(Succeed())

		By("the guest's shutdown ran in poweroff mode (serial: " + marker(image.EventShutdown("poweroff")) + ")")
		_, err := guest.WaitSerialAfter(ctx, serial, marker(image.EventShutdown("poweroff")))
		Expect(err).NotTo(HaveOccurred())

		By("QMP: SHUTDOWN with guest=true and reason guest-shutdown (the guest's ACPI power-off)")
		ev, err := guest.QMP().WaitEventAfter(ctx, mark, "SHUTDOWN", nil)
		Expect(err).NotTo(HaveOccurred())
		Expect(ev.Bool("guest")).To(BeTrue(), "SHUTDOWN: %s", ev.Raw)
		Expect(ev.Str("reason")).To(Equal("guest-shutdown"), "SHUTDOWN: %s", ev.Raw)

		By("the QEMU process exits with status 0 by itself")
		st, err := guest.Wait(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(st.ExitCode()).To(Equal(0))
	}, SpecTimeout(powerSpecTimeout))

	It("powers off by default when no mode is given; with -no-shutdown QEMU stays, in status shutdown", func(ctx SpecContext) {
		guest := bootGuest(ctx, withVM(vm.WithNoShutdown()))
		mark, serial := guest.QMP().Mark(), guest.SerialMark()

		By("guest-shutdown without arguments sends no reply")
		Expect(guest.Agent().CallNoReply(ctx, "guest-shutdown", nil, 0)).To(Succeed())

		By("serial: the default mode is poweroff, not halt or reboot")
		_, err := guest.WaitSerialAfter(ctx, serial, marker(image.EventShutdown("poweroff")))
		Expect(err).NotTo(HaveOccurred())

		By("QMP: SHUTDOWN with guest=true, reason guest-shutdown")
		ev, err := guest.QMP().WaitEventAfter(ctx, mark, "SHUTDOWN", nil)
		Expect(err).NotTo(HaveOccurred())
		Expect(ev.Bool("guest")).To(BeTrue(), "SHUTDOWN: %s", ev.Raw)
		Expect(ev.Str("reason")).To(Equal("guest-shutdown"), "SHUTDOWN: %s", ev.Raw)

		By("QMP query-status: shutdown, and the QEMU process is still there")
		Eventually(ctx, guest.QMP().Status).Should(Equal("shutdown"))
		Expect(guest.Exited()).NotTo(BeClosed())
	}, SpecTimeout(powerSpecTimeout))

	It("reboots the guest with mode reboot: RESET from the guest, a new boot, and the agent answers again", func(ctx SpecContext) {
		guest := bootGuest(ctx)
		token := writeToken(ctx, guest)
		bootBefore := bootID(ctx, guest)
		mark, serial := guest.QMP().Mark(), guest.SerialMark()

		By(`guest-shutdown {"mode": "reboot"} sends no reply`)
		Expect(guest.Agent().CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "reboot"}, 0)).To(Succeed())

		By("serial: the guest's shutdown ran in reboot mode")
		_, err := guest.WaitSerialAfter(ctx, serial, marker(image.EventShutdown("reboot")))
		Expect(err).NotTo(HaveOccurred())

		By("QMP: RESET with guest=true and reason guest-reset, and no SHUTDOWN")
		ev, err := guest.QMP().WaitEventAfter(ctx, mark, "RESET", nil)
		Expect(err).NotTo(HaveOccurred())
		Expect(ev.Bool("guest")).To(BeTrue(), "RESET: %s", ev.Raw)
		Expect(ev.Str("reason")).To(Equal("guest-reset"), "RESET: %s", ev.Raw)

		By("serial: the guest boots again up to " + marker(image.EventReady))
		_, err = guest.WaitSerialAfter(ctx, serial, marker(image.EventReady))
		Expect(err).NotTo(HaveOccurred())

		By("the agent of the new boot answers on the same channel")
		Expect(guest.Agent().SyncUntil(ctx, 2*time.Second)).To(Succeed())
		Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())

		By("console: a new kernel boot_id, and the token in tmpfs is gone")
		Expect(bootID(ctx, guest)).NotTo(Equal(bootBefore))
		Expect(token).NotTo(BeEmpty())
		Expect(readToken(ctx, guest)).To(BeEmpty())
		Expect(eventsAfter(guest, mark, "SHUTDOWN")).To(BeEmpty())
		Expect(guest.QMP().Status(ctx)).To(Equal("running"))
	}, SpecTimeout(rebootSpecTimeout))

	It("halts the guest with mode halt: the kernel says System halted, QEMU reports nothing and keeps running until stopped", func(ctx SpecContext) {
		guest := bootGuest(ctx)
		mark, serial := guest.QMP().Mark(), guest.SerialMark()

		By(`guest-shutdown {"mode": "halt"} sends no reply`)
		Expect(guest.Agent().CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "halt"}, 0)).To(Succeed())

		By("serial: the shutdown ran in halt mode, and the kernel halted")
		_, err := guest.WaitSerialAfter(ctx, serial, marker(image.EventShutdown("halt")))
		Expect(err).NotTo(HaveOccurred())
		_, err = guest.WaitSerialAfter(ctx, serial, "System halted")
		Expect(err).NotTo(HaveOccurred())

		By("console: the guest's shell no longer answers (its CPUs are halted)")
		expectConsoleSilent(ctx, guest)

		By("QMP: no SHUTDOWN, RESET or SUSPEND, status still running (a halt is invisible to the host)")
		expectNoEvent(ctx, guest, mark, "SHUTDOWN", "RESET", "SUSPEND", "SUSPEND_DISK")
		Expect(guest.QMP().Status(ctx)).To(Equal("running"))
		Expect(guest.Exited()).NotTo(BeClosed())

		By("the harness stops QEMU")
		_, err = guest.Stop(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(guest.Exited()).To(BeClosed())
	}, SpecTimeout(powerSpecTimeout))

	It("refuses an unknown mode with the reference's error, and nothing happens", func(ctx SpecContext) {
		guest := bootGuest(ctx)
		mark := guest.QMP().Mark()

		By(`guest-shutdown {"mode": "sleep"} gets GenericError "mode is invalid (valid values are: halt|powerdown|reboot" (sic)`)
		Expect(guest.Agent().CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "sleep"}, refusalWindow)).To(
			MatchAgentError("GenericError", "mode is invalid (valid values are: halt|powerdown|reboot"))

		expectStillRunning(ctx, guest, mark)
	}, SpecTimeout(powerSpecTimeout))
})

var _ = Describe("guest-suspend-ram", Label("destructive", "suspend"), cmdLabel("guest-suspend-ram"), func() {
	It("suspends to RAM (S3): SUSPEND, status suspended, and after system_wakeup the same boot goes on", func(ctx SpecContext) {
		guest := bootGuest(ctx)
		token := writeToken(ctx, guest)
		boot := bootID(ctx, guest)

		By("guest-suspend-ram sends no reply")
		mark := guest.QMP().Mark()
		Expect(guest.Agent().CallNoReply(ctx, "guest-suspend-ram", nil, 0)).To(Succeed())
		expectSuspendedToRAM(ctx, guest, mark)

		By("QMP system_wakeup, then WAKEUP and status running")
		wake(ctx, guest)

		By("the agent answers again, and the console sees the same boot with the token intact")
		Expect(guest.Agent().SyncUntil(ctx, 2*time.Second)).To(Succeed())
		Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
		Expect(readToken(ctx, guest)).To(Equal(token))
		Expect(bootID(ctx, guest)).To(Equal(boot))
		// One round only: on this QEMU (7.2, SeaBIOS 1.16.2, q35) a guest cannot enter S3 a
		// second time. The wakeup resets the ICH9 LPC, SeaBIOS's resume path does not program
		// its PMBASE and ACPI_CNTL again (config bytes 0x40-0x47 read 01 00 00 00 00 00 00 00
		// after it, 01 06 00 00 80 00 00 00 before), and Linux restores only the standard
		// header, so the guest's next write to PM1a_CNT goes nowhere: the kernel logs a
		// suspend and an instant resume, and QEMU sees nothing. No agent can change that.
	}, SpecTimeout(powerSpecTimeout))

	It("on a machine without S3: ours says not supported and the guest keeps running; the reference freezes the guest", func(ctx SpecContext) {
		if !onImage(image.ProfileTiny) {
			// Seen on debian-cloud: ours runs systemctl suspend there, as the reference does, and
			// sends no reply; what the guest then does is systemd's doing, not the agent's.
			Skip("needs a guest where the agent writes /sys/power itself (no systemd, no pm-utils): only the tiny image is one; with systemd both agents hand suspend to systemctl")
		}
		guest := bootGuest(ctx, withVM(vm.WithoutS3()))
		reference := isReference()

		By("console: the kernel still lists mem in /sys/power/state, but /sys/power/mem_sleep has no deep (S3)")
		out, err := guest.Console().RunOK(ctx, "cat /sys/power/state; echo; cat /sys/power/mem_sleep")
		Expect(err).NotTo(HaveOccurred())
		Expect(strings.Fields(out)).To(ContainElement("mem"))
		Expect(out).NotTo(ContainSubstring("deep"))

		mark := guest.QMP().Mark()
		if !reference {
			By("ours: GenericError \"the requested suspend mode is not supported by the guest\"")
			err = guest.Agent().CallNoReply(ctx, "guest-suspend-ram", nil, refusalWindow)
			Expect(err).To(MatchAgentError("GenericError", "the requested suspend mode is not supported by the guest"))
			expectStillRunning(ctx, guest, mark)
			return
		}
		// Reference deviation (architecture.md, "Power"): qemu-ga 7.2 sees "mem" in
		// /sys/power/state and writes it; with only s2idle the kernel freezes into
		// suspend-to-idle, which nothing on this machine wakes. The host sees no SUSPEND, the
		// status stays running, and neither the agent nor the console answers. This branch
		// proves the bug is still there; it fails the day the reference stops freezing.
		By("reference 7.2: no reply at all (it wrote mem to /sys/power/state)")
		err = guest.Agent().CallNoReply(ctx, "guest-suspend-ram", nil, 0)
		Expect(err).NotTo(HaveOccurred(), "the reference answered; the freeze of architecture.md did not happen")
		By("reference 7.2: the guest froze: the console and the agent are silent, QMP shows no SUSPEND and status running")
		expectConsoleSilent(ctx, guest)
		pingCtx, cancel := context.WithTimeout(ctx, powerQuietWindow)
		defer cancel()
		Expect(guest.Agent().Call(pingCtx, "guest-ping", nil, nil)).To(MatchError(context.DeadlineExceeded))
		Expect(eventsAfter(guest, mark, "SUSPEND", "SHUTDOWN", "RESET")).To(BeEmpty())
		Expect(guest.QMP().Status(ctx)).To(Equal("running"))
	}, SpecTimeout(powerSpecTimeout))
})

var _ = Describe("guest-suspend-disk", Label("destructive", "suspend"), cmdLabel("guest-suspend-disk"), func() {
	It("hibernates to the swap disk: SUSPEND_DISK, SHUTDOWN, QEMU exits, and a restart on the same disk resumes the same boot", func(ctx SpecContext) {
		h := newHibernatingGuest(ctx)
		token := writeToken(ctx, h.guest)
		boot := bootID(ctx, h.guest)
		up := uptime(ctx, h.guest)

		By("guest-suspend-disk sends no reply")
		mark := h.guest.QMP().Mark()
		Expect(h.guest.Agent().CallNoReply(ctx, "guest-suspend-disk", nil, 0)).To(Succeed())
		expectHibernated(ctx, h.guest, mark)

		resumed := h.restart(ctx)
		By("console: the same boot_id, the token intact in tmpfs, and an uptime that went on")
		Expect(bootID(ctx, resumed)).To(Equal(boot))
		Expect(readToken(ctx, resumed)).To(Equal(token))
		Expect(uptime(ctx, resumed)).To(BeNumerically(">", up))
		By("the agent answers in the resumed guest")
		Expect(resumed.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
	}, SpecTimeout(hibernateSpecTimeout))

	It("without swap: an error, and the guest keeps running", func(ctx SpecContext) {
		guest := bootGuest(ctx)
		reference := isReference()

		By("console: the kernel lists disk in /sys/power/state, and /proc/swaps has its header line only")
		out, err := guest.Console().RunOK(ctx, "cat /sys/power/state")
		Expect(err).NotTo(HaveOccurred())
		Expect(strings.Fields(out)).To(ContainElement("disk"))
		out, err = guest.Console().RunOK(ctx, "wc -l < /proc/swaps")
		Expect(err).NotTo(HaveOccurred())
		Expect(strings.TrimSpace(out)).To(Equal("1"))

		// Ours checks for somewhere to write the image before it asks the kernel, and says why
		// not (a deviation qga-behavior.md allows where the reference handles a guest badly).
		want, who := "the requested suspend mode is not supported by the guest: no resume device for hibernation (/sys/power/resume is 0:0 and no swap is active)", "ours"
		if reference {
			// The reference only looks for "disk" in /sys/power/state, so it writes it: the
			// kernel freezes every task, snapshots the memory, finds no swap device ("PM:
			// Cannot find swap device" on the serial line) and thaws again, and the child's
			// failed write is all the reference reports.
			want, who = "child process has failed to suspend", "reference 7.2"
		}
		if !onImage(image.ProfileTiny) && !reference {
			// With systemd, ours asks systemctl hibernate first, as the reference does; systemd
			// refuses without swap (exit status 1), and since /sys/power cannot hibernate either
			// (no resume device), ours reports that failure instead of answering success.
			want, who = "the helper program 'systemctl hibernate' returned an unexpected exit status code (1)", "ours, with systemd"
		}
		mark := guest.QMP().Mark()
		By(fmt.Sprintf("%s: guest-suspend-disk gets GenericError %q", who, want))
		Expect(guest.Agent().CallNoReply(ctx, "guest-suspend-disk", nil, refusalWindow)).To(MatchAgentError("GenericError", want))
		expectStillRunning(ctx, guest, mark)
	}, SpecTimeout(powerSpecTimeout))
})

var _ = Describe("guest-suspend-hybrid", Label("destructive", "suspend"), cmdLabel("guest-suspend-hybrid"), func() {
	It("on a sysfs-only guest: ours suspends to RAM after writing the image, the reference says not supported", func(ctx SpecContext) {
		if !onImage(image.ProfileTiny) {
			Skip("needs a guest without systemd and pm-utils, where an agent reaches hybrid suspend through /sys/power alone: only the tiny image is one")
		}
		h := newHibernatingGuest(ctx)
		By("console: the kernel offers suspend in /sys/power/disk, and there are no pm-utils or systemd")
		out, err := h.guest.Console().RunOK(ctx, "cat /sys/power/disk; for p in pm-is-supported systemctl; do command -v $p || echo no-$p; done")
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("suspend"))
		Expect(out).To(ContainSubstring("no-pm-is-supported"))
		Expect(out).To(ContainSubstring("no-systemctl"))

		if isReference() {
			// Reference deviation: qemu-ga 7.2 has no sysfs hybrid mode (qga-behavior.md,
			// guest-suspend-*); it reaches hybrid only through systemd or pm-utils.
			mark := h.guest.QMP().Mark()
			By("reference 7.2: GenericError \"the requested suspend mode is not supported by the guest\"")
			Expect(h.guest.Agent().CallNoReply(ctx, "guest-suspend-hybrid", nil, refusalWindow)).To(
				MatchAgentError("GenericError", "the requested suspend mode is not supported by the guest"))
			expectStillRunning(ctx, h.guest, mark)
			return
		}
		By("ours: hybrid suspend through sysfs")
		h.hybridCycle(ctx)
	}, SpecTimeout(hibernateSpecTimeout))

	It("with pm-utils (tiny.pm=1): both agents suspend to RAM after writing the image", func(ctx SpecContext) {
		if !onImage(image.ProfileTiny) {
			Skip("needs the tiny image's pm-utils stand-ins (tiny.pm=1); this image has no pm-utils")
		}
		h := newHibernatingGuest(ctx, withKernelArgs("tiny.pm=1"))
		By("console: the pm-utils stand-ins are on the PATH, so both agents take that path")
		out, err := h.guest.Console().RunOK(ctx, "for p in pm-is-supported pm-suspend-hybrid; do command -v $p; done")
		Expect(err).NotTo(HaveOccurred())
		Expect(strings.Fields(out)).To(HaveExactElements("/usr/sbin/pm-is-supported", "/usr/sbin/pm-suspend-hybrid"))
		h.hybridCycle(ctx)
	}, SpecTimeout(hibernateSpecTimeout))
})

var _ = Describe("guest-suspend-hybrid with systemd", Label("destructive", "suspend"), cmdLabel("guest-suspend-hybrid"), func() {
	It("both agents hand it to systemd (systemctl hybrid-sleep), which suspends to RAM after writing the image", func(ctx SpecContext) {
		if onImage(image.ProfileTiny) {
			Skip("needs systemd in the guest: the tiny image has none (IMAGE=debian-cloud has)")
		}
		h := newHibernatingGuest(ctx)
		By("console: systemd has systemd-hybrid-sleep.service, and there are no pm-utils")
		out, err := h.guest.Console().RunOK(ctx, "systemctl show -p LoadState --value systemd-hybrid-sleep.service; command -v pm-is-supported || echo no-pm-is-supported")
		Expect(err).NotTo(HaveOccurred())
		Expect(strings.Fields(out)).To(HaveExactElements("loaded", "no-pm-is-supported"))
		resumed := h.hybridCycle(ctx)
		By("console: systemd's journal of this boot has systemd-hybrid-sleep.service performing the sleep")
		out, err = resumed.Console().RunOK(ctx, "journalctl -b -q -o cat -u systemd-hybrid-sleep.service")
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("hybrid-sleep"))
	}, SpecTimeout(hibernateSpecTimeout))
})

// hibernatingGuest is a guest with a swap disk that it also resumes from, and what it takes to
// boot a second QEMU on the same disks.
type hibernatingGuest struct {
	guest *vm.VM
	opts  []guestOption // the boot's options, which the second QEMU boots with too
	swap  string        // the swap image, shared by every QEMU of the spec (no overlay)
}

// newHibernatingGuest creates a swap disk and boots a guest that enables it and resumes from it
// (resume=: the tiny image's /init tries it before any mount, a cloud image's initramfs before
// it mounts the root), with the image's own disks kept for the second QEMU.
func newHibernatingGuest(ctx context.Context, opts ...guestOption) *hibernatingGuest {
	GinkgoHelper()
	if !env.Image.DirectKernelBoot() {
		Skip("needs resume= on the kernel command line: IMAGE=" + env.Image.Image + " boots through its own boot loader")
	}
	dir := GinkgoT().TempDir()
	swap := filepath.Join(dir, "swap.qcow2")
	Expect(image.CreateSwapDisk(ctx, swap, image.DiskSpec{})).To(Succeed())
	h := &hibernatingGuest{swap: swap}
	h.opts = append([]guestOption{withSwap("vda"), withResume("vda"), withVM(h.disk()), withPersistentDisks(dir)}, opts...)
	h.guest = bootGuest(ctx, h.opts...)

	By("console: the swap disk is active")
	out, err := h.guest.Console().RunOK(ctx, "cat /proc/swaps")
	Expect(err).NotTo(HaveOccurred())
	Expect(out).To(ContainSubstring("/dev/vda"))
	return h
}

// disk attaches the swap image itself, so that what one QEMU wrote the next one reads.
func (h *hibernatingGuest) disk() vm.Option {
	return vm.WithDisk(vm.Disk{Path: h.swap, Node: "swap"})
}

// restart boots a second QEMU with the same kernel command line and disks after the first one
// is gone, and waits until the guest resumed from its image: a guest that booted afresh instead
// would print the image's ready marker again (and the tiny image's /init, which tries the
// resume before anything else, prints "TINY: resume-none" when there was nothing to resume).
//
// The agent's port must exist before the resumed kernel runs: its virtio-console driver
// re-announces the ports it had open only while it restores, and a port hot-plugged later is
// one the guest believes it already has, so the guest never opens it again and QEMU never
// passes data to it. A host restarting a hibernated guest gives it its devices from the start
// too. So the second QEMU starts paused (-S), gets the port, and only then runs.
func (h *hibernatingGuest) restart(ctx context.Context) *vm.VM {
	GinkgoHelper()
	Expect(h.guest.Exited()).To(BeClosed(), "the first QEMU must be gone before a second one opens its disk")
	By("starting a second QEMU, paused, on the same swap disk and kernel command line")
	bootCtx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	var c guestConfig
	for _, o := range h.opts {
		o(&c)
	}
	v := vm.StartT(GinkgoT(), bootCtx, append(guestVMOptions(bootCtx, c), vm.WithQEMUArgs("-S"))...)

	By("plugging the agent's port before the guest runs, then QMP cont")
	attached := make(chan error, 1)
	go func() {
		// AttachAgent returns once the guest opened the port and the agent answers, which
		// can only happen after cont.
		_, err := v.AttachAgent(bootCtx)
		attached <- err
	}()
	Eventually(bootCtx, func() ([]string, error) {
		select {
		case err := <-attached:
			return nil, StopTrying("AttachAgent ended before the port was plugged").Wrap(err)
		default:
			return peripheralTypes(bootCtx, v)
		}
	}).Should(ContainElement("child<virtserialport>"))
	Expect(v.QMP().Execute(bootCtx, "cont", nil, nil)).To(Succeed())

	var err error
	if onImage(image.ProfileTiny) {
		_, err = v.WaitSerial(bootCtx, "TINY: resume-try vda")
		Expect(err).NotTo(HaveOccurred())
	}
	By("the agent of the hibernated boot opens its port again and answers")
	Eventually(bootCtx, attached).Should(Receive(&err))
	Expect(err).NotTo(HaveOccurred())
	By("serial: the guest never booted afresh (no " + marker(image.EventReady) + ")")
	Expect(string(v.SerialLog())).NotTo(ContainSubstring(marker(image.EventReady)))
	if onImage(image.ProfileTiny) {
		Expect(string(v.SerialLog())).NotTo(ContainSubstring("TINY: resume-none"))
	}
	return v
}

// peripheralTypes lists the QOM types of the VM's user-created devices (qom-list
// /machine/peripheral): "child<virtserialport>" once the agent's port is plugged.
func peripheralTypes(ctx context.Context, v *vm.VM) ([]string, error) {
	var props []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := v.QMP().Execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &props); err != nil {
		return nil, err
	}
	types := make([]string, len(props))
	for i, p := range props {
		types[i] = p.Type
	}
	return types, nil
}

// hybridCycle checks guest-suspend-hybrid twice: a power loss while suspended and a resume
// from the image on the swap disk, then, in the resumed guest, a wakeup from RAM. In this
// order because a second S3 after a wakeup never reaches QEMU on this machine (see the S3
// spec), while the QEMU the guest resumes in has booted its firmware afresh. It returns the
// resumed guest.
func (h *hibernatingGuest) hybridCycle(ctx context.Context) *vm.VM {
	GinkgoHelper()
	guest := h.guest
	token := writeToken(ctx, guest)
	boot := bootID(ctx, guest)
	up := uptime(ctx, guest)

	By("guest-suspend-hybrid sends no reply")
	mark := guest.QMP().Mark()
	Expect(guest.Agent().CallNoReply(ctx, "guest-suspend-hybrid", nil, 0)).To(Succeed())
	expectSuspendedToRAM(ctx, guest, mark)
	By("a power loss while suspended (QMP quit): only the image on the swap disk is left")
	_, err := guest.Stop(ctx)
	Expect(err).NotTo(HaveOccurred())

	resumed := h.restart(ctx)
	By("console: the image on the swap disk brought back the same boot, the token and the uptime")
	Expect(bootID(ctx, resumed)).To(Equal(boot))
	Expect(readToken(ctx, resumed)).To(Equal(token))
	Expect(uptime(ctx, resumed)).To(BeNumerically(">", up))
	Expect(resumed.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())

	By("guest-suspend-hybrid again, in the resumed guest")
	token = writeToken(ctx, resumed)
	mark = resumed.QMP().Mark()
	Expect(resumed.Agent().CallNoReply(ctx, "guest-suspend-hybrid", nil, 0)).To(Succeed())
	expectSuspendedToRAM(ctx, resumed, mark)
	By("QMP system_wakeup resumes from RAM: the agent answers, same boot, token intact")
	wake(ctx, resumed)
	Expect(resumed.Agent().SyncUntil(ctx, 2*time.Second)).To(Succeed())
	Expect(resumed.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
	Expect(readToken(ctx, resumed)).To(Equal(token))
	Expect(bootID(ctx, resumed)).To(Equal(boot))
	return resumed
}

// expectSuspendedToRAM waits for the guest's S3: a SUSPEND event after from and status
// suspended.
func expectSuspendedToRAM(ctx context.Context, guest *vm.VM, from qmp.Pos) {
	GinkgoHelper()
	By("QMP: SUSPEND, and query-status suspended")
	_, err := guest.QMP().WaitEventAfter(ctx, from, "SUSPEND", nil)
	Expect(err).NotTo(HaveOccurred())
	Eventually(ctx, guest.QMP().Status).Should(Equal("suspended"))
	Expect(eventsAfter(guest, from, "SUSPEND_DISK", "SHUTDOWN")).To(BeEmpty())
}

// expectHibernated waits for the guest's S4: SUSPEND_DISK, then SHUTDOWN, then QEMU exiting 0.
func expectHibernated(ctx context.Context, guest *vm.VM, from qmp.Pos) {
	GinkgoHelper()
	By("QMP: SUSPEND_DISK, then SHUTDOWN from the guest, and QEMU exits with status 0")
	sd, err := guest.QMP().WaitEventAfter(ctx, from, "SUSPEND_DISK", nil)
	Expect(err).NotTo(HaveOccurred())
	sh, err := guest.QMP().WaitEventAfter(ctx, from, "SHUTDOWN", nil)
	Expect(err).NotTo(HaveOccurred())
	Expect(sh.Seq).To(BeNumerically(">", sd.Seq), "SHUTDOWN must follow SUSPEND_DISK")
	Expect(sh.Bool("guest")).To(BeTrue(), "SHUTDOWN: %s", sh.Raw)
	st, err := guest.Wait(ctx)
	Expect(err).NotTo(HaveOccurred())
	Expect(st.ExitCode()).To(Equal(0))
}

// wake sends QMP system_wakeup to a suspended guest and waits for WAKEUP and status running.
func wake(ctx context.Context, guest *vm.VM) {
	GinkgoHelper()
	mark := guest.QMP().Mark()
	Expect(guest.QMP().Execute(ctx, "system_wakeup", nil, nil)).To(Succeed())
	_, err := guest.QMP().WaitEventAfter(ctx, mark, "WAKEUP", nil)
	Expect(err).NotTo(HaveOccurred())
	Eventually(ctx, guest.QMP().Status).Should(Equal("running"))
}

// expectStillRunning checks, after a refused power command, that nothing happened: the agent
// and the console answer, the guest's shutdown never ran (the guests of these specs
// never shut down before, so the whole serial log must lack it), and QEMU reports no power
// event and status running, for powerQuietWindow after the request at least.
func expectStillRunning(ctx context.Context, guest *vm.VM, from qmp.Pos) {
	GinkgoHelper()
	By("the agent still answers")
	Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
	By("console: the shell answers and the kernel's boot goes on")
	_, err := guest.Console().RunOK(ctx, "true")
	Expect(err).NotTo(HaveOccurred())
	By("QMP: no SHUTDOWN, RESET, SUSPEND or SUSPEND_DISK, and status running")
	expectNoEvent(ctx, guest, from, "SHUTDOWN", "RESET", "SUSPEND", "SUSPEND_DISK")
	Expect(guest.QMP().Status(ctx)).To(Equal("running"))
	By("serial: the guest's shutdown never ran")
	Expect(string(guest.SerialLog())).NotTo(ContainSubstring(marker(image.EventShutdown(""))))
}

// expectNoEvent fails if one of the named events arrives after from, watching until
// powerQuietWindow has passed.
func expectNoEvent(ctx context.Context, guest *vm.VM, from qmp.Pos, names ...string) {
	GinkgoHelper()
	wctx, cancel := context.WithTimeout(ctx, powerQuietWindow)
	defer cancel()
	ev, err := guest.QMP().WaitEventAfter(wctx, from, "", func(e qmp.Event) bool { return slices.Contains(names, e.Name) })
	Expect(err).To(MatchError(context.DeadlineExceeded), "unexpected event %s", ev.Raw)
}

// eventsAfter lists the events with one of these names that arrived after from.
func eventsAfter(guest *vm.VM, from qmp.Pos, names ...string) []string {
	var got []string
	for _, e := range guest.QMP().Events() {
		if e.Seq >= int(from) && slices.Contains(names, e.Name) {
			got = append(got, string(e.Raw))
		}
	}
	return got
}

// expectConsoleSilent checks that the console shell does not run a command within
// powerQuietWindow: the guest's CPUs stopped doing work.
func expectConsoleSilent(ctx context.Context, guest *vm.VM) {
	GinkgoHelper()
	cctx, cancel := context.WithTimeout(ctx, powerQuietWindow)
	defer cancel()
	out, _, err := guest.Console().Run(cctx, "echo alive")
	Expect(err).To(MatchError(context.DeadlineExceeded), "the console answered: %q", out)
}

// writeToken writes a random token to tokenPath through the console and returns it.
func writeToken(ctx context.Context, guest *vm.VM) string {
	GinkgoHelper()
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	By("console: writing a random token to " + tokenPath + " (tmpfs)")
	_, err := guest.Console().RunOK(ctx, fmt.Sprintf("echo %s > %s && sync", token, tokenPath))
	Expect(err).NotTo(HaveOccurred())
	return token
}

// readToken reads tokenPath through the console; "" when it does not exist.
func readToken(ctx context.Context, guest *vm.VM) string {
	GinkgoHelper()
	out, _, err := guest.Console().Run(ctx, "cat "+tokenPath+" 2>/dev/null")
	Expect(err).NotTo(HaveOccurred())
	return strings.TrimSpace(out)
}

// bootID is the kernel's random id of the current boot: a new one after every reboot or cold
// boot, the same one after a resume.
func bootID(ctx context.Context, guest *vm.VM) string {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, "cat /proc/sys/kernel/random/boot_id")
	Expect(err).NotTo(HaveOccurred())
	id := strings.TrimSpace(out)
	Expect(id).To(HaveLen(36))
	return id
}

// uptime is the guest's /proc/uptime in seconds.
func uptime(ctx context.Context, guest *vm.VM) float64 {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, "cat /proc/uptime")
	Expect(err).NotTo(HaveOccurred())
	f := strings.Fields(out)
	Expect(f).NotTo(BeEmpty())
	up, err := strconv.ParseFloat(f[0], 64)
	Expect(err).NotTo(HaveOccurred())
	return up
}
