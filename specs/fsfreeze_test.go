package specs

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/vm"
)

// The fsfreeze specs prove a freeze where it matters: on the disk as the host sees it. A backup
// tool freezes the guest and copies its disks; the copy is only worth something if every
// filesystem in it is clean and holds everything written before the freeze. So the oracle is a
// QMP blockdev-backup copy of each data disk, checked on the host (ext4: dumpe2fs, e2fsck,
// debugfs) or by a second kernel mount in the guest of a hot-added copy (xfs: its log can only
// be replayed by mounting it). A control copy taken without freezing fails the same checks,
// which proves the checks can fail.
//
// Each spec boots its own guest: freezing is the one thing a shared guest must never see.

// frozenAllowlist is the reference's ga_freeze_allowlist (qga/main.c, the same from the seed to
// 10.x): the only commands an agent answers while the guest's filesystems are frozen.
var frozenAllowlist = []string{
	"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
	"guest-fsfreeze-status", "guest-fsfreeze-thaw",
}

// frozenDisabled is the reference's reply to any other command while frozen.
func frozenDisabled(cmd string) string {
	return "Command " + cmd + " has been disabled: the agent is in frozen state"
}

// Guest knobs that keep freshly written data in the guest's memory until something flushes it:
// no periodic writeback, ext4 commits and xfs log forces only once an hour. With them, what
// reaches the disk before a copy is exactly what the freeze flushed, however slow the machine
// is, so a copy taken without a freeze reliably misses the new files and one taken during a
// freeze can only have them because the freeze flushed them.
const holdWritesInMemory = `echo 0 > /proc/sys/vm/dirty_writeback_centisecs && ` +
	`echo 360000 > /proc/sys/vm/dirty_expire_centisecs && ` +
	`echo 360000 > /proc/sys/fs/xfs/xfssyncd_centisecs && ` +
	`mount -o remount,commit=3600 /mnt/vda`

// hookScript is the fsfreeze hook the first spec gives the agent (-F). It appends its argument
// to a log on the ext4 disk, which can only be written before a freeze and after a thaw: the
// reference runs the hook with "freeze" before it freezes anything (so that applications can
// flush) and with "thaw" after it has thawed everything. So the copy taken while frozen must
// hold the "freeze" line, and an agent that ran the hook at the wrong moment would hang in it.
const hookScript = `#!/bin/sh
echo "$1" >> /mnt/vda/hook.log
`

// fsfreezeHookPath is where the console installs the hook. Not in /run: a cloud image's
// initramfs mounts it noexec, and an agent must not run a hook it cannot execute.
const fsfreezeHookPath = "/usr/local/sbin/qgakit-fsfreeze-hook"

var _ = Describe("guest-fsfreeze", Label("destructive"), func() {
	It("freezes ext4 and xfs so that the host's copies are clean and complete, runs the hook around it, and thaws",
		cmdLabel("guest-fsfreeze-freeze", "guest-fsfreeze-status", "guest-fsfreeze-thaw"), func(ctx SpecContext) {
			dir := GinkgoT().TempDir()
			seed := fsRandomBytes(64 << 10)
			ext4Disk, xfsDisk := filepath.Join(dir, "ext4.qcow2"), filepath.Join(dir, "xfs.qcow2")
			By("making an ext4 disk that holds seed.bin (mkfs.ext4 -d on the host) and an empty xfs disk")
			Expect(image.CreateExt4Disk(ctx, ext4Disk, image.DiskSpec{Files: []image.DiskFile{{Path: "seed.bin", Data: seed}}})).To(Succeed())
			Expect(image.CreateXFSDisk(ctx, xfsDisk, image.DiskSpec{})).To(Succeed())

			guest := bootGuest(ctx,
				withVM(vm.WithDisk(vm.Disk{Path: ext4Disk, Node: "ext4"}), vm.WithDisk(vm.Disk{Path: xfsDisk, Node: "xfs"}),
					vm.WithHotplugPorts(2)),
				withMounts("vda", "vdb"),
				withAgentArgs("-F"+fsfreezeHookPath))
			agent, con := guest.Agent(), guest.Console()

			mounts := expectDataMounts(ctx, guest, map[string]string{"/mnt/vda": "ext4", "/mnt/vdb": "xfs"})
			ensureThawedOnCleanup(guest, slices.Sorted(maps.Keys(mounts))...)

			By("installing the hook from the console (the agent looks for it at each freeze and thaw), and keeping new writes in the guest's memory")
			_, err := con.RunOK(ctx, fmt.Sprintf("mkdir -p %[1]s && printf '%%s' %[2]s > %[3]s && chmod 755 %[3]s && %[4]s",
				filepath.Dir(fsfreezeHookPath), fsShellQuote(hookScript), fsfreezeHookPath, holdWritesInMemory))
			Expect(err).NotTo(HaveOccurred())

			By("writing new files on both filesystems from the console, without syncing")
			want := map[string]string{} // path relative to the filesystem -> sha256
			written, err := con.RunOK(ctx, `for fs in vda vdb; do
				head -c 262144 /dev/urandom > /mnt/$fs/new-1.bin && mkdir -p /mnt/$fs/dir && head -c 3000 /dev/urandom > /mnt/$fs/dir/new-2.bin || exit 1
			done
			cd /mnt && sha256sum vda/new-1.bin vda/dir/new-2.bin vdb/new-1.bin vdb/dir/new-2.bin`)
			Expect(err).NotTo(HaveOccurred())
			for _, line := range strings.Split(strings.TrimSpace(written), "\n") {
				f := strings.Fields(line)
				Expect(f).To(HaveLen(2), "sha256sum output %q", written)
				want[f[1]] = f[0]
			}
			Expect(want).To(HaveLen(4))

			By("the control: QMP blockdev-backup copies of both disks taken now, without a freeze")
			Expect(guest.Backup(ctx, "ext4", filepath.Join(dir, "ext4-unfrozen.raw"))).To(Succeed())
			Expect(guest.Backup(ctx, "xfs", filepath.Join(dir, "xfs-unfrozen.raw"))).To(Succeed())

			By(fmt.Sprintf("guest-fsfreeze-status is thawed, and guest-fsfreeze-freeze freezes all %d block-device filesystems", len(mounts)))
			Expect(fsfreezeStatus(ctx, agent)).To(Equal("thawed"))
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-freeze")).To(Equal(int64(len(mounts))), "guest-fsfreeze-freeze must count the frozen filesystems")
			Expect(fsfreezeStatus(ctx, agent)).To(Equal("frozen"))

			By("a write from the console blocks: the guest's kernel has the writer asleep on the freeze")
			write := startBlockedWrite(ctx, guest, "/mnt/vda/late.txt")

			By("QMP blockdev-backup copies of both disks taken while frozen")
			Expect(guest.Backup(ctx, "ext4", filepath.Join(dir, "ext4-frozen.raw"))).To(Succeed())
			Expect(guest.Backup(ctx, "xfs", filepath.Join(dir, "xfs-frozen.raw"))).To(Succeed())

			By("guest-fsfreeze-thaw thaws them all, the console's write completes, and the status is thawed")
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-thaw")).To(Equal(int64(len(mounts))), "guest-fsfreeze-thaw must count the thawed filesystems")
			write.wait(ctx)
			Expect(con.RunOK(ctx, "cat /mnt/vda/late.txt")).To(Equal("late\n"))
			Expect(fsfreezeStatus(ctx, agent)).To(Equal("thawed"))

			By("guest-fsfreeze-thaw when nothing is frozen returns 0")
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-thaw")).To(BeZero())

			By("the hook ran with freeze and then with thaw after each thaw (the reference runs it even when nothing was frozen)")
			Expect(con.RunOK(ctx, "cat /mnt/vda/hook.log")).To(Equal("freeze\nthaw\nthaw\n"))
			wantExt4 := map[string]string{
				"seed.bin": fsSHA256(seed),
				"hook.log": fsSHA256([]byte("freeze\n")), // the hook wrote it before the freeze
			}
			wantXFS := map[string]string{}
			for p, sum := range want {
				if rel, ok := strings.CutPrefix(p, "vda/"); ok {
					wantExt4[rel] = sum
				} else {
					wantXFS[strings.TrimPrefix(p, "vdb/")] = sum
				}
			}
			files := append(slices.Collect(maps.Keys(wantExt4)), "late.txt")

			By("host: the frozen ext4 copy is clean (no needs_recovery, e2fsck -fn passes) and has every file written before the freeze, and not the late write")
			frozenExt4 := filepath.Join(dir, "ext4-frozen.raw")
			Expect(ext4Features(ctx, frozenExt4)).NotTo(ContainElement("needs_recovery"))
			out, err := exec.CommandContext(ctx, "e2fsck", "-fn", frozenExt4).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "e2fsck -fn of the frozen copy:\n%s", out)
			Expect(ext4Checksums(ctx, frozenExt4, files)).To(Equal(wantExt4))

			By("host, the control: the unfrozen ext4 copy needs recovery, and after e2fsck replays its journal the new files are not there")
			unfrozenExt4 := filepath.Join(dir, "ext4-unfrozen.raw")
			Expect(ext4Features(ctx, unfrozenExt4)).To(ContainElement("needs_recovery"))
			out, err = exec.CommandContext(ctx, "e2fsck", "-fy", unfrozenExt4).CombinedOutput()
			Expect(fsExitCode(err)).To(BeNumerically("<=", 1), "e2fsck -fy of the unfrozen copy:\n%s", out)
			Expect(ext4Features(ctx, unfrozenExt4)).NotTo(ContainElement("needs_recovery"))
			Expect(ext4Checksums(ctx, unfrozenExt4, files)).To(Equal(map[string]string{"seed.bin": fsSHA256(seed)}))

			By("guest: the frozen xfs copy, hot-added and mounted with -o nouuid (the mount replays whatever its log holds), has every file written before the freeze")
			xfsFiles := slices.Collect(maps.Keys(wantXFS))
			Expect(mountedCopyChecksums(ctx, guest, 0, filepath.Join(dir, "xfs-frozen.raw"), xfsFiles)).To(Equal(wantXFS))

			By("guest, the control: the unfrozen xfs copy, mounted the same way, has none of them")
			Expect(mountedCopyChecksums(ctx, guest, 1, filepath.Join(dir, "xfs-unfrozen.raw"), xfsFiles)).To(BeEmpty())
		}, SpecTimeout(bootTimeout+6*time.Minute))

	It("refuses everything but the allowlist while frozen, also after the agent restarts, and the restarted agent thaws",
		cmdLabel("guest-fsfreeze-freeze", "guest-fsfreeze-status", "guest-fsfreeze-thaw", "guest-info", "guest-ping", "guest-sync"),
		func(ctx SpecContext) {
			dir := GinkgoT().TempDir()
			disk := filepath.Join(dir, "ext4.qcow2")
			Expect(image.CreateExt4Disk(ctx, disk, image.DiskSpec{})).To(Succeed())
			guest := bootGuest(ctx, withVM(vm.WithDisk(vm.Disk{Path: disk, Node: "ext4"})), withMounts("vda"))
			agent, con := guest.Agent(), guest.Console()
			mounts := expectDataMounts(ctx, guest, map[string]string{"/mnt/vda": "ext4"})
			ensureThawedOnCleanup(guest, slices.Sorted(maps.Keys(mounts))...)

			By(fmt.Sprintf("freezing the guest's %d block-device filesystems", len(mounts)))
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-freeze")).To(Equal(int64(len(mounts))))

			expectFrozenAgent(ctx, agent)

			By("killing the agent from the console (SIGKILL: it cannot thaw on its way out); the supervisor starts it again")
			killAgentAndWaitRestart(ctx, guest)

			By("the kernel still has the filesystem frozen: a write from the console starts and blocks")
			write := startBlockedWrite(ctx, guest, "/mnt/vda/late.txt")

			By("the new agent process finds the frozen state the old one left, and behaves the same")
			expectFrozenAgent(ctx, agent)

			By(fmt.Sprintf("guest-fsfreeze-thaw from the new agent thaws them: the count is %d and the write completes", len(mounts)))
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-thaw")).To(Equal(int64(len(mounts))))
			write.wait(ctx)
			Expect(con.RunOK(ctx, "cat /mnt/vda/late.txt")).To(Equal("late\n"))

			By("every command is enabled again, also for the agent's next start: the thaw cleared the persisted state")
			killAgentAndWaitRestart(ctx, guest)
			Expect(fsfreezeStatus(ctx, agent)).To(Equal("thawed"))
			info := callGuestInfo(ctx, agent)
			for _, name := range seeds.CommandNames() {
				Expect(info[name]).To(BeTrue(), "guest-info: %s after thaw", name)
			}
			var t int64
			Expect(agent.Call(ctx, "guest-get-time", nil, &t)).To(Succeed())
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-thaw")).To(BeZero())
		}, SpecTimeout(bootTimeout+4*time.Minute))
})

// expectFrozenAgent checks the agent's frozen state from the outside: its status, every
// command of the schema answered with the reference's reply for a frozen agent (the
// allowlisted ones run, every other one is refused, including a second freeze), and guest-info
// showing exactly the allowlist enabled.
func expectFrozenAgent(ctx context.Context, agent *qga.Client) {
	GinkgoHelper()
	By("guest-fsfreeze-status is frozen")
	Expect(fsfreezeStatus(ctx, agent)).To(Equal("frozen"))

	By("every schema command outside the allowlist, a second freeze included, gets CommandNotFound with the reference's text")
	got, want := map[string]string{}, map[string]string{}
	for _, name := range seeds.CommandNames() {
		if slices.Contains(frozenAllowlist, name) {
			continue
		}
		want[name] = "CommandNotFound: " + frozenDisabled(name)
		// The reference refuses a disabled command before it looks at the arguments, so none
		// are needed. The no-reply commands get an error reply too; a bound keeps an agent that
		// wrongly runs one (and so stays silent) from hanging the spec.
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := agent.Call(cctx, name, nil, nil)
		cancel()
		var e *qga.Error
		switch {
		case err == nil:
			got[name] = "success"
		case errors.As(err, &e):
			got[name] = e.Class + ": " + e.Desc
		default:
			got[name] = "no reply: " + err.Error()
		}
	}
	Expect(got).To(Equal(want))

	By("the allowlisted commands still run")
	Expect(agent.Call(ctx, "guest-ping", nil, nil)).To(Succeed())
	var id int64
	Expect(agent.Call(ctx, "guest-sync", map[string]any{"id": 4242}, &id)).To(Succeed())
	Expect(id).To(Equal(int64(4242)))

	By("guest-info lists exactly the allowlist enabled")
	info := callGuestInfo(ctx, agent)
	for _, name := range seeds.CommandNames() {
		Expect(info[name]).To(Equal(slices.Contains(frozenAllowlist, name)), "guest-info enabled of %s while frozen", name)
	}
}

// callGuestInfo returns guest-info's enabled flag per schema command.
func callGuestInfo(ctx context.Context, agent *qga.Client) map[string]bool {
	GinkgoHelper()
	var info guestInfo
	Expect(agent.Call(ctx, "guest-info", nil, &info)).To(Succeed())
	enabled := map[string]bool{}
	for _, c := range info.Commands {
		if seeds.Command(c.Name) != nil {
			enabled[c.Name] = c.Enabled
		}
	}
	Expect(enabled).To(HaveLen(len(seeds.CommandNames())), "guest-info must list every schema command")
	return enabled
}

// fsfreezeCall runs guest-fsfreeze-freeze or -thaw and returns its count. It is bounded: an
// agent that deadlocks (by running the hook while frozen, say) fails here, with a message,
// rather than at the spec's timeout.
func fsfreezeCall(ctx context.Context, agent *qga.Client, cmd string) int64 {
	GinkgoHelper()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var n int64
	Expect(agent.Call(cctx, cmd, nil, &n)).To(Succeed(), cmd)
	return n
}

// fsfreezeStatus is guest-fsfreeze-status's reply.
func fsfreezeStatus(ctx context.Context, agent *qga.Client) string {
	GinkgoHelper()
	var s string
	Expect(agent.Call(ctx, "guest-fsfreeze-status", nil, &s)).To(Succeed())
	return s
}

// killAgentAndWaitRestart kills the agent in the guest with SIGKILL and waits until the
// supervisor's new process answers on the same port.
func killAgentAndWaitRestart(ctx context.Context, guest *vm.VM) {
	GinkgoHelper()
	mark := guest.SerialMark()
	_, err := guest.Console().RunOK(ctx, "kill -9 $(pidof "+agentProcName()+")")
	Expect(err).NotTo(HaveOccurred())
	_, err = guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentExit(137)))
	Expect(err).NotTo(HaveOccurred(), "the agent did not die of SIGKILL")
	_, err = guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentStart))
	Expect(err).NotTo(HaveOccurred())
	Expect(guest.Agent().SyncUntil(ctx, 2*time.Second)).To(Succeed())
}

// blockedWrite is a console write to a filesystem that is expected to be frozen. The console
// command writes in a background child and watches it in /proc until the child either sleeps
// on the superblock's freeze lock (state D with wchan percpu_rwsem_wait: sb_start_write waits
// there while the filesystem is frozen; nothing else in creating a file does) or has finished
// (a zombie). State and wchan are two reads, so one loop may see the child still running with
// its wchan already set: only both together count. It reports which on ttyS0,
// the guest's log, which the harness reads while the console itself waits for the child. So
// "blocked" is what the guest's kernel says, not a guess from how long the write took.
type blockedWrite struct {
	cmd *vm.Command
}

// startBlockedWrite starts a console write of "late\n" to path and waits for the kernel's
// verdict: the write must be blocked by the freeze.
func startBlockedWrite(ctx context.Context, guest *vm.VM, path string) *blockedWrite {
	GinkgoHelper()
	tag := "QGAKIT-SPEC: writer-" + hex.EncodeToString(fsRandomBytes(6))
	cmd, err := guest.Console().Start(ctx, fmt.Sprintf(`echo late > %s &
		w=$!
		while :; do
			st=$(cut -d' ' -f3 /proc/$w/stat) wc=$(cat /proc/$w/wchan)
			[ "$st" = Z ] && break
			[ "$st" = D ] && [ "$wc" = percpu_rwsem_wait ] && break
		done
		echo "%s state=$st wchan=$wc." > /dev/ttyS0
		wait $w`, path, tag))
	Expect(err).NotTo(HaveOccurred())
	pos, err := guest.WaitSerial(ctx, tag+" ")
	Expect(err).NotTo(HaveOccurred(), "the console's writer never reported")
	// The line may have arrived only in part: its end is the "." after the wchan.
	_, err = guest.WaitSerialAfter(ctx, pos, ".")
	Expect(err).NotTo(HaveOccurred(), "the console's writer never finished its report")
	log := string(guest.SerialLog())
	report := log[strings.LastIndex(log, tag+" ")+len(tag)+1:]
	verdict, _, _ := strings.Cut(report, ".")
	Expect(verdict).To(Equal("state=D wchan=percpu_rwsem_wait"), "the console's write to %s was not blocked by a freeze", path)
	return &blockedWrite{cmd: cmd}
}

// wait waits for the write to complete, which it can only do after a thaw.
func (w *blockedWrite) wait(ctx context.Context) {
	GinkgoHelper()
	out, rc, err := w.cmd.Wait(ctx)
	Expect(err).NotTo(HaveOccurred(), "the console's write did not complete after the thaw")
	Expect(rc).To(BeZero(), "the console's write failed: %s", out)
}

// ensureThawedOnCleanup registers, before anything else of the spec is torn down, a thaw of the
// guest: through the agent, else through the console's fsfreeze --unfreeze on each mount, else
// by killing the VM. A frozen guest must never outlive its spec.
func ensureThawedOnCleanup(guest *vm.VM, mounts ...string) {
	DeferCleanup(func(ctx SpecContext) {
		if agent := guest.Agent(); agent != nil {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := agent.Call(actx, "guest-fsfreeze-thaw", nil, nil)
			cancel()
			if err == nil {
				return
			}
			fmt.Fprintf(GinkgoWriter, "cleanup: guest-fsfreeze-thaw failed (%v), thawing from the console\n", err)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for _, m := range mounts {
			// Unfreezing a filesystem that is not frozen fails with EINVAL, which is fine.
			if _, _, err := guest.Console().Run(cctx, "fsfreeze --unfreeze "+m); err != nil {
				fmt.Fprintf(GinkgoWriter, "cleanup: the console does not answer (%v), killing the VM\n", err)
				guest.Kill()
				return
			}
		}
	}, NodeTimeout(2*time.Minute))
}

// expectDataMounts checks on the console that the spec's data disks are mounted with these
// filesystem types (mount point -> type) and that no other data disk is, and returns every
// block-device filesystem the guest has mounted: the data disks and the image's own (a cloud
// image's root; the tiny image has none), which is the set an agent must freeze and trim.
func expectDataMounts(ctx context.Context, guest *vm.VM, want map[string]string) map[string]string {
	GinkgoHelper()
	By(fmt.Sprintf("the console sees the data disks mounted as %v among the guest's block-device filesystems", want))
	mounts := guestBlockMounts(ctx, guest)
	for mp, typ := range want {
		Expect(mounts).To(HaveKeyWithValue(mp, typ))
	}
	for mp := range mounts {
		if strings.HasPrefix(mp, "/mnt/") {
			Expect(want).To(HaveKey(mp), "a data disk the spec did not ask for is mounted")
		}
	}
	fmt.Fprintf(GinkgoWriter, "block-device filesystems in the guest: %v\n", mounts)
	return mounts
}

// guestBlockMounts lists, from the console, the mounts of block-device filesystems (device major
// not 0) as mount point -> type: the filesystems an agent must freeze and trim.
func guestBlockMounts(ctx context.Context, guest *vm.VM) map[string]string {
	GinkgoHelper()
	// mountinfo: id parent MAJ:MIN root mountpoint options ... - fstype source ...
	out, err := guest.Console().RunOK(ctx, `while read -r _ _ dev _ mp rest; do
		case $dev in 0:*) continue;; esac
		echo "$mp ${rest#* - }"
	done < /proc/self/mountinfo`)
	Expect(err).NotTo(HaveOccurred())
	mounts := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			mounts[f[0]] = f[1]
		}
	}
	return mounts
}

// ext4Features is the "Filesystem features" list of dumpe2fs -h for an ext4 image on the host.
func ext4Features(ctx context.Context, img string) []string {
	GinkgoHelper()
	out, err := exec.CommandContext(ctx, "dumpe2fs", "-h", img).Output()
	Expect(err).NotTo(HaveOccurred(), "dumpe2fs -h %s", img)
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Filesystem features:"); ok {
			return strings.Fields(v)
		}
	}
	Fail("dumpe2fs -h printed no features for " + img)
	return nil
}

// ext4Checksums reads files from an ext4 image on the host with debugfs (no mount, no journal
// replay) and returns the sha256 of each one that exists.
func ext4Checksums(ctx context.Context, img string, files []string) map[string]string {
	GinkgoHelper()
	sums := map[string]string{}
	for _, f := range files {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "debugfs", "-R", "cat /"+f, img)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		Expect(cmd.Run()).To(Succeed(), "debugfs cat %s: %s", f, stderr.String())
		if strings.Contains(stderr.String(), "not found") {
			continue
		}
		sums[f] = fsSHA256(stdout.Bytes())
	}
	return sums
}

// mountedCopyChecksums hot-adds a copy of the xfs disk to the guest on hot-plug port i, mounts
// it with -o nouuid (the original with the same UUID is mounted), which replays its log, and
// returns the sha256 of each of files that exists in it.
func mountedCopyChecksums(ctx context.Context, guest *vm.VM, i int, img string, files []string) map[string]string {
	GinkgoHelper()
	serial := fmt.Sprintf("fscopy%d", i)
	Expect(guest.HotAddDisk(ctx, vm.HotplugPort(i), vm.Disk{Path: img, Format: "raw", Node: serial, Serial: serial})).To(Succeed())
	var dev string
	Eventually(ctx, func() (string, error) {
		out, err := guest.Console().RunOK(ctx, `for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = `+serial+` ] && echo ${d##*/}; done; true`)
		dev = strings.TrimSpace(out)
		return dev, err
	}).WithPolling(500*time.Millisecond).WithTimeout(time.Minute).ShouldNot(BeEmpty(), "the guest never saw the hot-added disk")
	mnt := "/mnt/" + serial
	_, err := guest.Console().RunOK(ctx, fmt.Sprintf("mkdir -p %s && mount -t xfs -o nouuid /dev/%s %s", mnt, dev, mnt))
	Expect(err).NotTo(HaveOccurred())
	out, err := guest.Console().RunOK(ctx, fmt.Sprintf("cd %s && for f in %s; do [ -f $f ] && sha256sum $f; done; true", mnt, strings.Join(files, " ")))
	Expect(err).NotTo(HaveOccurred())
	sums := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			sums[f[1]] = f[0]
		}
	}
	return sums
}

func fsRandomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func fsSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fsExitCode is a command's exit status from exec's error (0 for nil, -1 when it did not run).
func fsExitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		return -1
	}
}

// fsShellQuote quotes s as one argument for the guest's sh.
func fsShellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
