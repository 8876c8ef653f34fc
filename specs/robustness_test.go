package specs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

// Robustness: what hosts, guests and crashes do to the channel while requests are under way,
// and what the harness does when a spec's VM crashes or a spec hangs. Every spec ends with the
// agent answering, and proves through the console (the guest's files, /proc) that nothing it
// acknowledged was lost and nothing cut off ran. The garbage corpus itself runs in the host
// tier (agent/hosttier/robustness_test.go), where it is cheap; the protocol specs cover
// garbage over virtio-serial and the port vanishing mid-reply.

// robustDir is the guest directory these specs work in (tmpfs).
const robustDir = "/tmp/qgakit-robust"

var _ = Describe("robustness", Ordered, Label("robustness"), func() {
	var guest *vm.VM
	BeforeAll(func(ctx SpecContext) {
		disk := filepath.Join(GinkgoT().TempDir(), "ext4.qcow2")
		Expect(image.CreateExt4Disk(ctx, disk, image.DiskSpec{})).To(Succeed())
		// A 16 MiB read costs the agent several copies of it, beside a 20 MiB file in tmpfs.
		guest = bootGuest(ctx, withVM(vm.WithMemory(1024), vm.WithDisk(vm.Disk{Path: disk, Node: "ext4"})), withMounts("vda"))
		_, err := guest.Console().RunOK(ctx, "mkdir -p "+robustDir)
		Expect(err).NotTo(HaveOccurred())
	}, NodeTimeout(bootTimeout))

	It("loses no acknowledged write and runs no cut-off request over 100 host disconnects in the middle of requests",
		cmdLabel("guest-file-open", "guest-file-write", "guest-file-close", "guest-sync-delimited"), func(ctx SpecContext) {
			agent := guest.Agent()
			pids := gfAgentPids(ctx, guest)
			path := robustDir + "/cycles"
			h := gfOpen(ctx, agent, path, "w")
			var acked bytes.Buffer
			By("100 times: a guest-file-write of a record, acknowledged; then the first bytes of another write, and the host hangs up and reconnects")
			for i := range 100 {
				rec := fmt.Sprintf("rec-%03d\n", i)
				Expect(gfWrite(ctx, agent, h, []byte(rec)).Count).To(Equal(int64(len(rec))))
				acked.WriteString(rec)
				// Cut at a different place each time: inside a key, a string, the base64,
				// just before the last brace. The agent keeps the cut bytes across the
				// reconnect, as the reference does; the client's 0xFF before its next request
				// is what drops them.
				cut := strings.TrimSpace(string(request("guest-file-write", map[string]any{
					"handle": h, "buf-b64": gfB64([]byte(fmt.Sprintf("CUT-%03d\n", i)))})))
				cut = cut[:1+(i*7)%(len(cut)-1)]
				Expect(agent.Send(ctx, []byte(cut))).To(Succeed())
				Expect(agent.Reconnect(ctx)).To(Succeed(), "reconnect #%d", i)
			}
			gfClose(ctx, agent, h)
			By("the console reads exactly the 100 acknowledged records, in order, and nothing of the cut writes")
			got, _ := gfConsoleRead(ctx, guest, path)
			Expect(string(got)).To(Equal(acked.String()))
			By("the console sees the same agent process: a host hanging up is no reason to exit")
			Expect(gfAgentPids(ctx, guest)).To(Equal(pids))
		}, NodeTimeout(6*time.Minute))

	It("keeps the handle whose read reply the host hung up on halfway: the read happened, and its bytes read again",
		cmdLabel("guest-file-open", "guest-file-read", "guest-file-seek", "guest-file-close", "guest-sync-delimited"),
		func(ctx SpecContext) {
			agent := guest.Agent()
			pids := gfAgentPids(ctx, guest)
			path := robustDir + "/numbers"
			By("the console writes 20 MB of numbered lines: every offset of the file holds different bytes")
			_, err := guest.Console().RunOK(ctx, "seq 1 2600000 > "+path)
			Expect(err).NotTo(HaveOccurred())
			size := gfConsoleSize(ctx, guest, path)
			Expect(size).To(BeNumerically(">", protoStuckCount+(1<<20)))

			h := gfOpen(ctx, agent, path, "r")
			protoStartStuckRead(ctx, guest, agent, h, path)
			By("the agent holds that one descriptor of the file, and no other")
			Expect(protoAgentFileOffsets(ctx, guest, path)).To(ConsistOf(int64(protoStuckCount)))
			By("the host hangs up in the middle of that reply, connects again and resynchronises past what is left of it")
			Expect(agent.Reconnect(ctx)).To(Succeed())
			Expect(agent.SyncUntil(ctx, 30*time.Second)).To(Succeed())

			By("the handle is still open, at 16 MiB: the read ran whole though its reply was lost")
			Expect(gfSeek(ctx, agent, h, 0, "cur").Position).To(Equal(int64(protoStuckCount)))
			Expect(protoAgentFileOffsets(ctx, guest, path)).To(ConsistOf(int64(protoStuckCount)))
			By("reading on from there and again from the start gives the bytes the console reads at those offsets")
			r := gfRead(ctx, agent, h, 4096)
			Expect(gfSHA256(r.data)).To(Equal(robustConsoleRangeSHA256(ctx, guest, path, protoStuckCount, 4096)))
			Expect(gfSeek(ctx, agent, h, 0, "set").Position).To(BeZero())
			r = gfRead(ctx, agent, h, 1<<20)
			Expect(gfSHA256(r.data)).To(Equal(robustConsoleRangeSHA256(ctx, guest, path, 0, 1<<20)))
			gfClose(ctx, agent, h)
			Expect(gfAgentPids(ctx, guest)).To(Equal(pids), "the same agent process")
		}, NodeTimeout(6*time.Minute))

	It("runs no part of a request whose port is hot-unplugged while the request is arriving, and answers on the re-plugged port",
		cmdLabel("guest-file-open", "guest-file-write", "guest-file-close", "guest-sync-delimited", "guest-ping"),
		func(ctx SpecContext) {
			agent := guest.Agent()
			path := robustDir + "/unplugged"
			h := gfOpen(ctx, agent, path, "w")
			Expect(gfWrite(ctx, agent, h, []byte("before\n")).Count).To(Equal(int64(7)))

			pids := gfAgentPids(ctx, guest)
			Expect(pids).To(HaveLen(1))
			read0 := robustReadBytes(ctx, guest, pids[0])
			By("the first half of a guest-file-write of 4 MiB, with the rest never sent")
			req := request("guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64(bytes.Repeat([]byte("lost\n"), 4<<20/5))})
			Expect(agent.Send(ctx, req[:len(req)/2])).To(Succeed())
			By("the kernel counts the agent's reads: it has taken in most of that half, so the request is in flight inside the agent")
			Eventually(ctx, func(ctx context.Context) int64 {
				return robustReadBytes(ctx, guest, pids[0]) - read0
			}).WithPolling(200 * time.Millisecond).Should(BeNumerically(">=", len(req)/4))

			mark := guest.SerialMark()
			By("device_del of the port: QMP reports DEVICE_DELETED")
			Expect(guest.DetachAgent(ctx)).To(Succeed())
			By("both agents exit with status 0 when their port goes away (the guest's supervisor logs it) and it starts them again on the new port")
			_, err := guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentExit(0)))
			Expect(err).NotTo(HaveOccurred())
			agent, err = guest.AttachAgent(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(agent.Call(ctx, "guest-ping", nil, nil)).To(Succeed())

			By("the console reads only the acknowledged write in the file: nothing of the cut request ran")
			got, _ := gfConsoleRead(ctx, guest, path)
			Expect(string(got)).To(Equal("before\n"))
			By("the handle went with the old process; a new one writes")
			err = agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64([]byte("x"))}, nil)
			Expect(err).To(MatchAgentError("GenericError", fmt.Sprintf("handle '%d' has not been found", h)))
			h2 := gfOpen(ctx, agent, path, "a")
			Expect(h2).To(BeNumerically(">", h), "handles never repeat, across restarts")
			gfWrite(ctx, agent, h2, []byte("after\n"))
			gfClose(ctx, agent, h2)
			got, _ = gfConsoleRead(ctx, guest, path)
			Expect(string(got)).To(Equal("before\nafter\n"))
			Expect(gfAgentPids(ctx, guest)).To(HaveLen(1))
		}, NodeTimeout(5*time.Minute))

	It("keeps exactly the acknowledged bytes when killed in the middle of a guest-file-write stream; the reference loses its stdio buffer",
		cmdLabel("guest-file-open", "guest-file-write", "guest-sync-delimited"), func(ctx SpecContext) {
			agent := guest.Agent()
			path := robustDir + "/killed"
			h := gfOpen(ctx, agent, path, "w")
			By("ten guest-file-writes of 1000 random bytes each, every one acknowledged with count 1000")
			var acked []byte
			for range 10 {
				chunk := fsRandomBytes(1000)
				Expect(gfWrite(ctx, agent, h, chunk).Count).To(Equal(int64(1000)))
				acked = append(acked, chunk...)
			}
			By("the first half of an eleventh write, then SIGKILL from the console; the supervisor starts the agent again")
			req := request("guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64(fsRandomBytes(1000))})
			Expect(agent.Send(ctx, req[:len(req)/2])).To(Succeed())
			killAgentAndWaitRestart(ctx, guest)

			got, _ := gfConsoleRead(ctx, guest, path)
			if isReference() {
				By("the reference: fwrite kept the tail in its stdio buffer, which died with it; the console reads a prefix of what was acknowledged, whole 4 KiB blocks")
				Expect(len(got)).To(BeNumerically("<", len(acked)), "the reference's buffering lost nothing: the claim about it is stale")
				Expect(acked[:len(got)]).To(Equal(got), "what the reference kept is the start of what it acknowledged")
				Expect(len(got) % 4096).To(BeZero())
			} else {
				By("ours writes each request straight to the file: the console reads exactly the acknowledged 10,000 bytes, and nothing of the cut request")
				Expect(got).To(Equal(acked))
			}
			By("the handle died with the process")
			err := agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64([]byte("x"))}, nil)
			Expect(err).To(MatchAgentError("GenericError", fmt.Sprintf("handle '%d' has not been found", h)))
		}, NodeTimeout(4*time.Minute))

	It("stays frozen through an ignored SIGTERM and a SIGKILL restart, refuses all but the allowlist, and thaws; a port unplugged while frozen thaws on the way out",
		Label("destructive"), cmdLabel("guest-fsfreeze-freeze", "guest-fsfreeze-status", "guest-fsfreeze-thaw",
			"guest-file-open", "guest-info", "guest-ping", "guest-sync"), func(ctx SpecContext) {
			mounts := expectDataMounts(ctx, guest, map[string]string{"/mnt/vda": "ext4"})
			ensureThawedOnCleanup(guest, slices.Sorted(maps.Keys(mounts))...)
			agent := guest.Agent()
			n := int64(len(mounts))
			By(fmt.Sprintf("freezing the guest's %d block-device filesystems", n))
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-freeze")).To(Equal(n))
			pids := gfAgentPids(ctx, guest)
			Expect(pids).To(HaveLen(1))

			By("SIGTERM from the console: the kernel delivers it (nothing stays pending), and the agent stays, frozen")
			_, err := guest.Console().RunOK(ctx, "kill -TERM "+pids[0])
			Expect(err).NotTo(HaveOccurred())
			Eventually(ctx, func(ctx context.Context) bool {
				return robustNothingPending(ctx, guest, pids[0])
			}).Should(BeTrue())
			Expect(gfAgentPids(ctx, guest)).To(Equal(pids))
			Expect(fsfreezeStatus(ctx, agent)).To(Equal("frozen"))

			By("SIGKILL: the supervisor starts a new agent process")
			killAgentAndWaitRestart(ctx, guest)
			Expect(gfAgentPids(ctx, guest)).NotTo(Equal(pids))
			By("the kernel still has the filesystem frozen: a console write blocks")
			write := startBlockedWrite(ctx, guest, "/mnt/vda/late.txt")
			By("the new process finds the frozen state and enforces the allowlist")
			expectFrozenAgent(ctx, agent)
			By("guest-fsfreeze-thaw from it thaws them all, and the console's write completes")
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-thaw")).To(Equal(n))
			write.wait(ctx)
			Expect(guest.Console().RunOK(ctx, "cat /mnt/vda/late.txt")).To(Equal("late\n"))

			By("freezing again, then device_del of the port: the agent exits, and thaws what it froze on its way out")
			Expect(fsfreezeCall(ctx, agent, "guest-fsfreeze-freeze")).To(Equal(n))
			By("the kernel has it frozen again: a console write blocks")
			write = startBlockedWrite(ctx, guest, "/mnt/vda/late2.txt")
			mark := guest.SerialMark()
			Expect(guest.DetachAgent(ctx)).To(Succeed())
			_, err = guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentExit(0)))
			Expect(err).NotTo(HaveOccurred())
			By("the blocked console write completes: the exiting agent thawed the kernel's filesystems")
			tctx, tcancel := context.WithTimeout(ctx, time.Minute)
			defer tcancel()
			write.wait(tctx)
			By("the agent on the re-plugged port starts thawed, and runs everything")
			agent, err = guest.AttachAgent(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(fsfreezeStatus(ctx, agent)).To(Equal("thawed"))
			h := gfOpen(ctx, agent, "/mnt/vda/after.txt", "w")
			gfClose(ctx, agent, h)
			By("the console writes to the filesystem without blocking: the kernel has it thawed")
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			out, err := guest.Console().RunOK(wctx, "echo free > /mnt/vda/free.txt && cat /mnt/vda/free.txt")
			Expect(err).NotTo(HaveOccurred(), "the write blocked: the filesystem is still frozen")
			Expect(out).To(Equal("free\n"))
			Expect(guest.Console().RunOK(ctx, "cat /mnt/vda/late2.txt")).To(Equal("late\n"))
			By("the console sees the file the new agent created")
			Expect(gfConsoleExists(ctx, guest, "/mnt/vda/after.txt")).To(BeTrue())
		}, NodeTimeout(6*time.Minute))
})

// robustConsoleRangeSHA256 is the sha256 of n bytes of a guest file from offset off, as the
// console computes it.
func robustConsoleRangeSHA256(ctx context.Context, guest *vm.VM, path string, off, n int64) string {
	GinkgoHelper()
	// head first: tail reads to the end of its input, so no writer in the pipe meets a closed
	// reader (a console under systemd ignores SIGPIPE, and coreutils' tail then says "write
	// error" instead of dying quietly).
	out, err := guest.Console().RunOK(ctx, fmt.Sprintf("head -c %d %s | tail -c %d | sha256sum", off+n, path, n))
	Expect(err).NotTo(HaveOccurred())
	return strings.Fields(out)[0]
}

// robustReadBytes is how many bytes process pid has read so far (rchar of /proc/PID/io).
func robustReadBytes(ctx context.Context, guest *vm.VM, pid string) int64 {
	GinkgoHelper()
	return gfConsoleInt(ctx, guest, fmt.Sprintf("sed -n 's/^rchar: //p' /proc/%s/io", pid))
}

// robustNothingPending reports whether pid has no signal pending, for its thread or the
// process (SigPnd and ShdPnd of /proc/PID/status): a signal sent to it has been delivered.
func robustNothingPending(ctx context.Context, guest *vm.VM, pid string) bool {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, fmt.Sprintf(`grep -E '^(SigPnd|ShdPnd):' /proc/%s/status`, pid))
	Expect(err).NotTo(HaveOccurred())
	f := strings.Fields(out)
	Expect(f).To(HaveLen(4), "pending signal lines %q", out)
	return strings.Trim(f[1], "0") == "" && strings.Trim(f[3], "0") == ""
}

// The harness's own failure modes run in a child run of this suite's binary, so that the
// failures they provoke are the child's and this suite stays green: a spec whose QEMU crashes
// fails at once with the VM's artifacts written, a spec that hangs past its SpecTimeout is
// torn down within its grace period, and a spec beside them passes. The child's specs exist
// only when robustChildEnv is set.
const robustChildEnv = "QGAKIT_ROBUSTNESS_CHILD"

// The child's specs, and the decorators the parent checks them against.
const (
	robustChildLabel    = "robustness-child"
	robustCrashText     = "child: QEMU is killed in the middle of the spec"
	robustHangText      = "child: the spec hangs past its timeout"
	robustBystanderText = "child: a spec beside them"
	robustHangTimeout   = 30 * time.Second
	robustHangGrace     = 15 * time.Second
	robustCrashMarker   = "qgakit-robustness: last words before the crash"
)

var _ = robustChildSpecs()

func robustChildSpecs() bool {
	if os.Getenv(robustChildEnv) == "" {
		return false
	}
	Describe("harness failure modes", Label(robustChildLabel), func() {
		It(robustCrashText, cmdLabel("guest-ping"), func(ctx SpecContext) {
			guest := bootGuest(ctx)
			Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
			// The last line on the serial log before the crash, for the parent to find in the
			// artifacts.
			_, err := guest.Console().RunOK(ctx, "echo "+robustCrashMarker+" > /dev/ttyS0")
			Expect(err).NotTo(HaveOccurred())
			_, err = guest.WaitSerial(ctx, robustCrashMarker)
			Expect(err).NotTo(HaveOccurred())
			// SIGKILL to QEMU's process group: to the harness, a crash.
			guest.Kill()
			Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
		}, SpecTimeout(bootTimeout+time.Minute))
		It(robustHangText, cmdLabel("guest-ping"), func(ctx SpecContext) {
			// A machine without a disk or kernel: a QEMU to tear down is all this spec needs.
			guest := vm.StartT(GinkgoT(), ctx)
			_, err := guest.WaitSerial(ctx, "a line the guest never prints")
			Expect(err).NotTo(HaveOccurred())
		}, SpecTimeout(robustHangTimeout), GracePeriod(robustHangGrace))
		It(robustBystanderText, cmdLabel("guest-ping"), func(ctx SpecContext) {
			guest := bootGuest(ctx)
			Expect(guest.Agent().Call(ctx, "guest-ping", nil, nil)).To(Succeed())
		}, SpecTimeout(bootTimeout+time.Minute))
	})
	return true
}

var _ = Describe("the harness", Label("robustness"), func() {
	It("fails a spec whose QEMU crashes at once with its serial log attached, tears a hung spec down within its grace period, and leaves the spec beside them and the host alone",
		cmdLabel("guest-ping"), func(ctx SpecContext) {
			if os.Getenv(robustChildEnv) != "" {
				Skip("this is the child run")
			}
			dir := GinkgoT().TempDir()
			artifacts := filepath.Join(dir, "artifacts")
			report := filepath.Join(dir, "report.json")
			By("running this suite's binary again with only the child's three specs")
			// /proc/self/exe, not os.Args[0]: Ginkgo compiles the suite to specs/specs.test,
			// which another run from the same checkout may replace or remove meanwhile.
			cmd := exec.CommandContext(ctx, "/proc/self/exe", "--ginkgo.label-filter="+robustChildLabel,
				"--ginkgo.json-report="+report, "--ginkgo.v")
			cmd.Env = append(os.Environ(), robustChildEnv+"=1", "ARTIFACTS="+artifacts)
			cmd.Stdout, cmd.Stderr = GinkgoWriter, GinkgoWriter
			err := cmd.Run()
			var ee *exec.ExitError
			Expect(err).To(BeAssignableToTypeOf(ee), "the child run must fail, and only by its specs failing")
			child := cmd.Process.Pid

			var reports []types.Report
			b, err := os.ReadFile(report)
			Expect(err).NotTo(HaveOccurred())
			Expect(json.Unmarshal(b, &reports)).To(Succeed())
			Expect(reports).To(HaveLen(1))
			// The report lists every spec of the suite; the filter skipped all but three.
			specs := map[string]types.SpecReport{}
			for _, s := range reports[0].SpecReports {
				if s.LeafNodeType == types.NodeTypeIt && s.State != types.SpecStateSkipped {
					specs[s.LeafNodeText] = s
				}
			}
			Expect(specs).To(HaveKey(robustCrashText))
			Expect(specs).To(HaveKey(robustHangText))
			Expect(specs).To(HaveKey(robustBystanderText))
			Expect(specs).To(HaveLen(3))

			By("the crashed spec failed, not timed out: the dead QEMU broke its agent call at once")
			crash := specs[robustCrashText]
			Expect(crash.State).To(Equal(types.SpecStateFailed), "%s", crash.Failure.Message)
			By("its artifacts hold the serial log up to the crash (the line the guest printed last) and QEMU's death by SIGKILL")
			crashDir := vm.ArtifactDir(artifacts, crash.FullText())
			serial, err := os.ReadFile(filepath.Join(crashDir, "serial0.log"))
			Expect(err).NotTo(HaveOccurred())
			Expect(string(serial)).To(ContainSubstring(robustCrashMarker))
			status, err := os.ReadFile(filepath.Join(crashDir, "status.txt"))
			Expect(err).NotTo(HaveOccurred())
			Expect(string(status)).To(ContainSubstring("exit: signal: killed"))

			By("the hung spec timed out and was torn down within its grace period")
			hang := specs[robustHangText]
			Expect(hang.State).To(Equal(types.SpecStateTimedout))
			Expect(hang.RunTime).To(BeNumerically("<", robustHangTimeout+robustHangGrace))

			By("the spec beside them passed")
			Expect(specs[robustBystanderText].State).To(Equal(types.SpecStatePassed))

			By("no QEMU, temp dir or socket of the child is left: every qgakit QEMU still running has its temp dir, owned by a live harness")
			Expect(robustOrphans(child)).To(BeEmpty())
		}, SpecTimeout(10*time.Minute))
})

// robustOrphans lists what a harness process (pid) left behind: temp dirs it owns, and QEMU
// processes whose temp dir is gone or belongs to it.
func robustOrphans(pid int) []string {
	GinkgoHelper()
	var left []string
	owned := func(dir string) bool {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		return err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid)
	}
	dirs, err := filepath.Glob("/tmp/qgakit-*")
	Expect(err).NotTo(HaveOccurred())
	for _, d := range dirs {
		if owned(d) {
			left = append(left, "temp dir "+d)
		}
	}
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	Expect(err).NotTo(HaveOccurred())
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.HasPrefix(b, []byte("qemu-system")) && !bytes.Contains(b, []byte("/qemu-system")) {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			i := bytes.Index(arg, []byte("/tmp/qgakit-"))
			if i < 0 {
				continue
			}
			dir := string(arg[i:])
			if j := strings.IndexByte(dir[len("/tmp/"):], '/'); j >= 0 {
				dir = dir[:len("/tmp/")+j]
			}
			if _, err := os.Stat(dir); err != nil || owned(dir) {
				left = append(left, fmt.Sprintf("QEMU %s with temp dir %s", filepath.Dir(p), dir))
			}
			break
		}
	}
	return left
}
