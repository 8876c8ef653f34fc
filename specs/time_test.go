package specs

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

// systemGuest is the guest that the clock, network and vCPU specs share, with what QEMU was
// told about it: that configuration is an oracle the agent cannot influence.
type systemGuest struct {
	*vm.VM
	bootedAt time.Time // the host's clock before QEMU started
	rtcBase  time.Time // -rtc base=, years away from when the suite runs
	macs     [2]string // mac= of the two NICs, drawn per run so that no agent can know them
	smp      int       // -smp
}

// The clock, network and vCPU specs share one guest (booting it is most of their cost), which
// has -rtc base years away, two user-mode NICs and -smp 2. None of them leaves a trace another
// reads: the clock specs move the clock and the RTC, which nothing else looks at, the network
// specs remove what they add, and the vCPU specs put cpu1 back online. A failure in one area
// must not hide the others, hence ContinueOnFailure. Each area's specs are in its own file:
// describeClock here, describeNetwork in network_test.go, describeVCPUs in vcpu_test.go.
var _ = Describe("the guest's clock, network and vCPUs", Ordered, ContinueOnFailure, func() {
	g := &systemGuest{
		rtcBase: time.Date(2047, 6, 15, 10, 0, 0, 0, time.UTC),
		macs:    netRandomMACs(),
		smp:     2,
	}
	BeforeAll(func(ctx SpecContext) {
		g.bootedAt = time.Now()
		g.VM = bootGuest(ctx, withVM(
			vm.WithRTCBase(g.rtcBase.Format("2006-01-02T15:04:05")),
			// restrict=on: nothing the guest sends can leave QEMU (slirp still answers
			// for its own addresses, such as the gateway 10.0.2.2).
			vm.WithNIC(vm.NIC{MAC: g.macs[0], NetdevOptions: "restrict=on"}),
			vm.WithNIC(vm.NIC{MAC: g.macs[1], NetdevOptions: "restrict=on"}),
			vm.WithSMP(g.smp),
		))
		// The tiny image brings every NIC up and gives eth0 slirp's address before it is ready;
		// a cloud image brings eth0 up by DHCP (cloud-init's fallback configuration), maybe only
		// after it is ready, and leaves the second NIC down. Both end where the specs start: every
		// NIC up, 10.0.2.15/24 on eth0.
		_, err := g.Console().RunOK(ctx, `for l in /sys/class/net/eth*; do ip link set dev "${l##*/}" up || exit 1; done`)
		Expect(err).NotTo(HaveOccurred())
		Eventually(ctx, func() string {
			out, _, _ := g.Console().Run(ctx, "ip -o -4 addr show dev eth0")
			return out
		}).WithPolling(500 * time.Millisecond).Should(ContainSubstring("inet 10.0.2.15/24 "))
	}, NodeTimeout(bootTimeout+time.Minute))

	describeClock(g)
	describeNetwork(g)
	describeVCPUs(g)
})

// describeClock adds the specs of guest-get-time and guest-set-time. The oracles are the
// console (adjtimex reads the system clock to the microsecond, /proc/uptime the boot-time
// clock, hwclock -r the RTC) and QEMU's own RTC (QMP qom-get of the machine's rtc-time, which
// is the MC146818's registers as the guest sees them), started at -rtc base years away, so
// that every value an agent could report or set without doing its job is years off.
//
// No tolerance here is a guess about machine speed. Realtime minus boot time is a constant
// until someone steps the clock; a console read of the boot-time clock on either side of a
// realtime read pins that constant to an interval whatever the delays, and two intervals that
// do not overlap prove a step. What is left is resolution: 10 ms for /proc/uptime and whole
// seconds for the RTC.
func describeClock(g *systemGuest) {
	// Years away from when the suite runs, from -rtc base, and from each other.
	steppedTo := time.Date(2031, 3, 3, 3, 3, 3, 0, time.UTC)
	setTarget := time.Date(2039, 9, 9, 9, 9, 9, 123456789, time.UTC)

	Describe("the clock", func() {
		It("guest-get-time reads the system clock the console reads", cmdLabel("guest-get-time"), func(ctx SpecContext) {
			guest := g.VM
			for range 3 {
				By("adjtimex on the console before and after the call brackets the agent's time (µs resolution)")
				before := clockRead(ctx, guest)
				var t int64
				Expect(guest.Agent().Call(ctx, "guest-get-time", nil, &t)).To(Succeed())
				after := clockRead(ctx, guest)
				// 7.2 reports microseconds times 1000, ours nanoseconds: both fall in the bracket.
				Expect(t).To(BeNumerically(">=", before.Real.UnixNano()))
				Expect(t).To(BeNumerically("<", after.Real.UnixNano()+int64(time.Microsecond)))
			}
		}, NodeTimeout(2*time.Minute))

		It("guest-set-time without a time sets the system clock from the RTC that QEMU started at -rtc base", cmdLabel("guest-set-time"), func(ctx SpecContext) {
			guest := g.VM
			By("QMP: QEMU's RTC is at -rtc base plus at most the time since QEMU started")
			rtc := clockQEMURTC(ctx, guest)
			Expect(rtc).To(BeTemporally(">=", g.rtcBase))
			Expect(rtc).To(BeTemporally("<=", g.rtcBase.Add(time.Since(g.bootedAt)+time.Second)))

			By("the console steps the system clock years away from the RTC (date -s)")
			_, err := guest.Console().RunOK(ctx, "date -u -s '"+steppedTo.Format("2006-01-02 15:04:05")+"'")
			Expect(err).NotTo(HaveOccurred())
			stepped := clockRead(ctx, guest)
			Expect(stepped.Real).To(BeTemporally("~", steppedTo, time.Hour), "the console could not step the clock")

			Expect(guest.Agent().Call(ctx, "guest-set-time", nil, nil)).To(Succeed())

			By("the console's system clock is the RTC's again, by hwclock -r on the console and by QMP")
			// The system clock gets the RTC's whole seconds (the reference's hwclock -s drops the
			// fraction), so the two agree to within a second either way.
			sys, rtcConsole := clockReadWithRTC(ctx, guest)
			Expect(rtcConsole).To(BeTemporally(">=", g.rtcBase), "the RTC is no longer at -rtc base")
			Expect(rtcConsole).To(BeTemporally(">=", sys[0].Real.Truncate(time.Second).Add(-time.Second)))
			Expect(rtcConsole).To(BeTemporally("<=", sys[1].Real.Add(time.Second)))
			sys0 := clockRead(ctx, guest)
			rtcQEMU := clockQEMURTC(ctx, guest)
			sys1 := clockRead(ctx, guest)
			Expect(rtcQEMU).To(BeTemporally(">=", sys0.Real.Truncate(time.Second).Add(-time.Second)))
			Expect(rtcQEMU).To(BeTemporally("<=", sys1.Real.Add(time.Second)))
		}, NodeTimeout(2*time.Minute))

		It("guest-set-time with a time steps the system clock there and writes it to the RTC", cmdLabel("guest-set-time", "guest-get-time"), func(ctx SpecContext) {
			guest := g.VM
			By("QMP: the RTC is not near the target before the call")
			Expect(clockQEMURTC(ctx, guest)).NotTo(BeTemporally("~", setTarget, 24*time.Hour))

			before := clockRead(ctx, guest)
			Expect(guest.Agent().Call(ctx, "guest-set-time", map[string]any{"time": setTarget.UnixNano()}, nil)).To(Succeed())
			after := clockRead(ctx, guest)

			By("the console's clock was set to the target at some boot time between the two console reads")
			// Set at boot time m in [before.UpAfter, after.UpBefore+10ms) to the target (truncated to
			// µs by both agents), realtime-boottime became target-m from then on.
			lo := setTarget.UnixNano() - int64(time.Microsecond) - int64(after.UpBefore+clockUpRes)
			hi := setTarget.UnixNano() - int64(before.UpAfter)
			measuredLo, measuredHi := after.offset()
			Expect(max(lo, measuredLo)).To(BeNumerically("<=", min(hi, measuredHi)),
				"realtime-boottime is in [%d, %d] after the call; setting %v between the reads gives [%d, %d]",
				measuredLo, measuredHi, setTarget, lo, hi)

			By("guest-get-time follows the new clock (bracketed by the console's adjtimex)")
			c0 := clockRead(ctx, guest)
			var t int64
			Expect(guest.Agent().Call(ctx, "guest-get-time", nil, &t)).To(Succeed())
			c1 := clockRead(ctx, guest)
			Expect(t).To(BeNumerically(">=", c0.Real.UnixNano()))
			Expect(t).To(BeNumerically("<", c1.Real.UnixNano()+int64(time.Microsecond)))

			By("hwclock -r on the console and QMP's rtc-time show the RTC followed")
			// Whole seconds: hwclock -w truncates the system time, and QEMU's MC146818 counts its
			// next second 500 ms after it was set, so the RTC may trail the system clock by up to
			// two seconds and lead it by one. The RTC was years away before the call.
			sys, rtcConsole := clockReadWithRTC(ctx, guest)
			Expect(rtcConsole).To(BeTemporally(">=", sys[0].Real.Truncate(time.Second).Add(-2*time.Second)))
			Expect(rtcConsole).To(BeTemporally("<=", sys[1].Real.Add(time.Second)))
			sys0 := clockRead(ctx, guest)
			rtcQEMU := clockQEMURTC(ctx, guest)
			sys1 := clockRead(ctx, guest)
			Expect(rtcQEMU).To(BeTemporally(">=", sys0.Real.Truncate(time.Second).Add(-2*time.Second)))
			Expect(rtcQEMU).To(BeTemporally("<=", sys1.Real.Add(time.Second)))
		}, NodeTimeout(2*time.Minute))

		It("guest-set-time refuses a time outside 1970..2069 with the reference's text and leaves the clock alone", cmdLabel("guest-set-time"), func(ctx SpecContext) {
			guest := g.VM
			By("the console: does the guest have /etc/localtime (the tiny image has none, a cloud image has)? 7.2's first text below depends on it")
			_, rc, err := guest.Console().Run(ctx, "test -e /etc/localtime")
			Expect(err).NotTo(HaveOccurred())
			localtime := rc == 0

			By("restarting the agent from the console, so that it has never converted a time before")
			clockRestartAgent(ctx, guest)
			reference := isReference()

			before := clockRead(ctx, guest)
			agent := guest.Agent()
			// 7.2 reports this refusal with error_setg_errno and whatever errno happens to be
			// set. In a fresh process that is the ENOENT glibc left behind when its first
			// localtime found no /etc/localtime; glibc looks only once, and later refusals
			// have found errno 0 (no tail) in every run. Ours appends no strerror: no call
			// failed, so the tail could only name a wrong cause.
			// With /etc/localtime, glibc's lookup finds it and leaves no ENOENT.
			first := "Invalid time"
			if reference && !localtime {
				first = "Invalid time: No such file or directory"
			}
			By(fmt.Sprintf("1969-07-20, a fresh agent's first refusal: %q", first))
			Expect(agent.Call(ctx, "guest-set-time", map[string]any{"time": time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC).UnixNano()}, nil)).
				To(MatchAgentError("GenericError", first))

			for _, ns := range []int64{
				time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC).UnixNano(), // the last refused second before 1970
				time.Date(2070, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(),      // the first refused second
				math.MaxInt64, // 2262; "Time %d is too large" needs a 32-bit time_t, so never here
				math.MinInt64, // 1677
			} {
				By(fmt.Sprintf("%d (%v): Invalid time", ns, time.Unix(0, ns).UTC()))
				Expect(agent.Call(ctx, "guest-set-time", map[string]any{"time": ns}, nil)).To(MatchAgentError("GenericError", "Invalid time"))
			}

			By("a time that is not a 64-bit integer is refused by the argument check")
			for _, v := range []any{clockRawJSON("9223372036854775808"), clockRawJSON("1.5e18"), "2039-09-09T09:09:09Z", true} {
				Expect(agent.Call(ctx, "guest-set-time", map[string]any{"time": v}, nil)).
					To(MatchAgentError("GenericError", "Invalid parameter type for 'time', expected: integer"), "time: %v", v)
			}

			By("the console's clock was not stepped: realtime-boottime is the same before and after")
			after := clockRead(ctx, guest)
			lo0, hi0 := before.offset()
			lo1, hi1 := after.offset()
			Expect(max(lo0, lo1)).To(BeNumerically("<=", min(hi0, hi1)),
				"realtime-boottime went from [%d, %d] to [%d, %d]", lo0, hi0, lo1, hi1)
		}, NodeTimeout(2*time.Minute))
	})
}

// clockUpRes is the resolution of /proc/uptime.
const clockUpRes = 10 * time.Millisecond

// clockReading is the guest's system clock read on the console between two reads of its
// boot-time clock.
type clockReading struct {
	Real              time.Time     // CLOCK_REALTIME by adjtimex, to the µs
	UpBefore, UpAfter time.Duration // CLOCK_BOOTTIME from /proc/uptime, truncated to 10 ms
}

// offset is the interval, in ns, that holds realtime minus boot time at the moment of the
// reading: the boot-time clock was at least UpBefore and less than UpAfter+10ms when adjtimex
// read the realtime clock, which was at least Real and less than Real+1µs.
func (r clockReading) offset() (lo, hi int64) {
	rt := r.Real.UnixNano()
	return rt - int64(r.UpAfter+clockUpRes), rt + int64(time.Microsecond) - int64(r.UpBefore)
}

// clockScript prints "uptime sec usec uptime"; read is a shell builtin, so only adjtimex forks
// between the two uptime reads.
const clockScript = `read a _ </proc/uptime; t=$(busybox adjtimex | awk '/time.tv_sec/{s=$2} /time.tv_usec/{u=$2} END{print s, u}'); read b _ </proc/uptime; echo "$a $t $b"`

// clockRead reads the guest's clocks on the console.
func clockRead(ctx context.Context, guest *vm.VM) clockReading {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, clockScript)
	Expect(err).NotTo(HaveOccurred())
	return clockParse(out)
}

// clockParse parses clockScript's output.
func clockParse(out string) clockReading {
	GinkgoHelper()
	f := strings.Fields(out)
	Expect(f).To(HaveLen(4), "clock script output %q", out)
	sec, err := strconv.ParseInt(f[1], 10, 64)
	Expect(err).NotTo(HaveOccurred(), "adjtimex seconds in %q", out)
	usec, err := strconv.ParseInt(f[2], 10, 64)
	Expect(err).NotTo(HaveOccurred(), "adjtimex microseconds in %q", out)
	return clockReading{
		Real:     time.Unix(sec, usec*1000).UTC(),
		UpBefore: clockParseUptime(f[0]),
		UpAfter:  clockParseUptime(f[3]),
	}
}

// clockParseUptime parses /proc/uptime's first field, seconds with two decimals.
func clockParseUptime(s string) time.Duration {
	GinkgoHelper()
	whole, frac, ok := strings.Cut(s, ".")
	Expect(ok).To(BeTrue(), "uptime %q", s)
	sec, err1 := strconv.ParseInt(whole, 10, 64)
	cs, err2 := strconv.ParseInt(frac, 10, 64)
	Expect(err1).NotTo(HaveOccurred(), "uptime %q", s)
	Expect(err2).NotTo(HaveOccurred(), "uptime %q", s)
	Expect(frac).To(HaveLen(2), "uptime %q", s)
	return time.Duration(sec)*time.Second + time.Duration(cs)*clockUpRes
}

// clockReadWithRTC reads the system clock, then the RTC with hwclock -r, then the system clock
// again, in one console command.
func clockReadWithRTC(ctx context.Context, guest *vm.VM) ([2]clockReading, time.Time) {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, clockScript+"; busybox hwclock -r; "+clockScript)
	Expect(err).NotTo(HaveOccurred())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	Expect(lines).To(HaveLen(3), "clock, hwclock -r, clock: %q", out)
	// busybox: "Fri Jun 15 10:00:10 2047  0.000000 seconds", in local time, which is UTC in a
	// guest without TZ or /etc/localtime (the tiny image) or with UTC there (a cloud image);
	// hwclock -w wrote it the same way.
	f := strings.Fields(lines[1])
	Expect(len(f)).To(BeNumerically(">=", 5), "hwclock -r said %q", lines[1])
	rtc, err := time.Parse("Mon Jan 2 15:04:05 2006", strings.Join(f[:5], " "))
	Expect(err).NotTo(HaveOccurred(), "hwclock -r said %q", lines[1])
	return [2]clockReading{clockParse(lines[0]), clockParse(lines[2])}, rtc
}

// clockQEMURTC is the time in QEMU's RTC registers, read over QMP (the MC146818 publishes it as
// the machine's rtc-time property), independent of the guest.
func clockQEMURTC(ctx context.Context, guest *vm.VM) time.Time {
	GinkgoHelper()
	var tm struct {
		Year int `json:"tm_year"`
		Mon  int `json:"tm_mon"`
		Mday int `json:"tm_mday"`
		Hour int `json:"tm_hour"`
		Min  int `json:"tm_min"`
		Sec  int `json:"tm_sec"`
	}
	Expect(guest.QMP().Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "rtc-time"}, &tm)).To(Succeed())
	return time.Date(tm.Year+1900, time.Month(tm.Mon+1), tm.Mday, tm.Hour, tm.Min, tm.Sec, 0, time.UTC)
}

// clockRestartAgent kills the agent from the console and waits until the supervisor's new one
// answers.
func clockRestartAgent(ctx context.Context, guest *vm.VM) {
	GinkgoHelper()
	mark := guest.SerialMark()
	_, err := guest.Console().RunOK(ctx, "kill -9 $(pidof "+agentProcName()+")")
	Expect(err).NotTo(HaveOccurred())
	_, err = guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentStart))
	Expect(err).NotTo(HaveOccurred())
	Expect(guest.Agent().SyncUntil(ctx, 5*time.Second)).To(Succeed())
}

// clockRawJSON is a JSON value sent as written (numbers that do not fit an int64 or a float64).
type clockRawJSON string

func (r clockRawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }
