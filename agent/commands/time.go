package commands

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
	"github.com/qgakit/qgakit/agent/protocol"
)

func init() {
	groups = append(groups, func(d *dispatch.Dispatcher, env *Env) {
		d.Register("guest-get-time", func(ctx context.Context, args dispatch.Args) (any, error) {
			return guestGetTime(), nil
		})
		d.Register("guest-set-time", func(ctx context.Context, args dispatch.Args) (any, error) {
			return nil, guestSetTime(ctx, env, args)
		})
	})
}

// guestGetTime is the system clock in nanoseconds since the epoch. The reference rounds to
// microseconds (g_get_real_time() * 1000); we keep the nanoseconds.
func guestGetTime() int64 { return time.Now().UnixNano() }

// The reference's texts for guest-set-time. Every RTC failure, in either direction, is
// reported with the text 7.2 uses when hwclock fails (sic: also for "system time from RTC").
const (
	errUnsupported = "this feature or command is not currently supported"
	errHwclock     = "hwclock failed to set hardware clock to system time"
)

// guestSetTime sets the system clock to the given time and then the RTC from it, or, without
// a time, the system clock from the RTC. The RTC is driven natively through /dev/rtc ioctls;
// hwclock is only the fallback of a guest without /dev/rtc and /dev/rtc0, or whose RTC ioctls
// failed. 7.2 answers "unsupported" whenever /sbin/hwclock is missing; we only do when there
// is neither an RTC device nor a hwclock, and, like 7.2, before touching the clock.
func guestSetTime(ctx context.Context, env *Env, args dispatch.Args) error {
	rtc := findRTC(env)
	hwclock := ""
	if rtc == "" {
		hwclock = findHwclock(env)
		if hwclock == "" {
			return protocol.Errorf(errUnsupported)
		}
	}

	t, hasTime := args["time"].(int64)
	if hasTime {
		// C division, as the reference: truncation toward zero for both parts.
		tv := unix.Timeval{Sec: t / 1e9, Usec: (t % 1e9) / 1e3}
		// g_date_set_time_t takes the local calendar year.
		if y := time.Unix(tv.Sec, 0).Year(); y < 1970 || y >= 2070 {
			// error_setg_errno with the errno of a call that did not fail: the reference
			// prints no strerror (verified on it).
			return protocol.Errorf("Invalid time")
		}
		if err := unix.Settimeofday(&tv); err != nil {
			return protocol.Errorf("Failed to set time to guest: %s", errtext.Strerror(err))
		}
	}

	if rtc != "" {
		var err error
		if hasTime {
			err = systemToRTC(ctx, env, rtc)
		} else {
			err = rtcToSystem(ctx, env, rtc)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("set-time interrupted: %w", ctx.Err())
		}
		// hwclock has other ways to the clock (direct CMOS access on x86 when /dev/rtc is
		// busy), so it is worth a try when there is one.
		if hwclock = findHwclock(env); hwclock == "" {
			return protocol.Errorf(errHwclock)
		}
	}

	flag := "-s"
	if hasTime {
		flag = "-w"
	}
	st, err := runChild(hwclock, []string{"hwclock", flag})
	if err != nil {
		return err
	}
	if st.signaled {
		return protocol.Errorf("child process has terminated abnormally")
	}
	if st.code != 0 {
		return protocol.Errorf(errHwclock)
	}
	return nil
}

// findRTC returns the RTC device the agent uses, /dev/rtc or else /dev/rtc0, or "".
func findRTC(env *Env) string {
	for _, p := range []string{"/dev/rtc", "/dev/rtc0"} {
		if _, err := os.Stat(hostPath(env, p)); err == nil {
			return hostPath(env, p)
		}
	}
	return ""
}

// findHwclock returns the reference's /sbin/hwclock when it is executable, or a hwclock in
// the helper search path, or "".
func findHwclock(env *Env) string {
	if p := hostPath(env, "/sbin/hwclock"); unix.Access(p, unix.X_OK) == nil {
		return p
	}
	if p, err := lookHelper(env, "hwclock"); err == nil {
		return p
	}
	return ""
}

// rtcLocal reports whether the RTC keeps local time, which /etc/adjtime says on its third
// line ("LOCAL"), as hwclock reads it; UTC otherwise.
func rtcLocal(env *Env) bool {
	lines, err := readLines(hostPath(env, "/etc/adjtime"))
	return err == nil && len(lines) >= 3 && strings.TrimSpace(lines[2]) == "LOCAL"
}

func rtcLocation(env *Env) *time.Location {
	if rtcLocal(env) {
		return time.Local
	}
	return time.UTC
}

// rtcSetDelay is how long after a write the RTC's seconds start counting: the MC146818 (the
// PC's rtc_cmos, QEMU's too) goes to the next second 500 ms after it is set, other RTCs at
// once. hwclock uses the same rule.
func rtcSetDelay(env *Env, fd int) time.Duration {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	name, err := os.ReadFile(hostPath(env, fmt.Sprintf("/sys/dev/char/%d:%d/name", unix.Major(st.Rdev), unix.Minor(st.Rdev))))
	if err == nil && strings.HasPrefix(string(name), "rtc_cmos") {
		return 500 * time.Millisecond
	}
	return 0
}

// systemToRTC writes the system time to the RTC (hwclock -w) at the instant that makes the
// RTC's seconds tick with the system clock's, which costs at most a second of waiting.
func systemToRTC(ctx context.Context, env *Env, dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	delay := rtcSetDelay(env, fd)

	// The next instant at which (now - delay) is a whole second.
	now := time.Now()
	at := now.Add(-delay).Truncate(time.Second).Add(time.Second).Add(delay)
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		return fmt.Errorf("set RTC: %w", ctx.Err())
	}
	set := time.Now().Add(-delay).Truncate(time.Second).In(rtcLocation(env))
	rt := unix.RTCTime{
		Sec:  int32(set.Second()),
		Min:  int32(set.Minute()),
		Hour: int32(set.Hour()),
		Mday: int32(set.Day()),
		Mon:  int32(set.Month()) - 1,
		Year: int32(set.Year()) - 1900,
	}
	if err := unix.IoctlSetRTCTime(fd, &rt); err != nil {
		return fmt.Errorf("RTC_SET_TIME on %s: %w", dev, err)
	}
	return nil
}

// rtcToSystem sets the system clock from the RTC (hwclock -s). Like hwclock, it reads the RTC
// right after its seconds tick, so the system clock lands within milliseconds of the RTC's
// time rather than anywhere in the second.
func rtcToSystem(ctx context.Context, env *Env, dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	first, err := unix.IoctlGetRTCTime(fd)
	if err != nil {
		return fmt.Errorf("RTC_RD_TIME on %s: %w", dev, err)
	}
	tick := waitRTCTick(ctx, fd, first)
	rt, err := unix.IoctlGetRTCTime(fd)
	if err != nil {
		return fmt.Errorf("RTC_RD_TIME on %s: %w", dev, err)
	}
	t := time.Date(int(rt.Year)+1900, time.Month(rt.Mon+1), int(rt.Mday), int(rt.Hour), int(rt.Min), int(rt.Sec), 0, rtcLocation(env))
	if t.Year() < 1970 {
		return fmt.Errorf("RTC of %s reads an impossible time %v", dev, t)
	}
	if tick.IsZero() {
		// Somewhere in the second the RTC shows: its middle halves the worst error.
		t = t.Add(500 * time.Millisecond)
	} else {
		// The time that passed since the tick belongs to the new clock too.
		t = t.Add(time.Since(tick))
	}
	tv := unix.NsecToTimeval(t.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("settimeofday: %w", err)
	}
	return nil
}

// rtcTickTimeout bounds the wait for the RTC's next second; past it the RTC is read as it is
// (to within a second), as hwclock does when the tick never comes.
const rtcTickTimeout = 1500 * time.Millisecond

// waitRTCTick waits for the RTC's seconds to change and returns when that was seen, or the
// zero time when it was not. It uses the update interrupt when the RTC has one, and reads the
// RTC in a loop otherwise.
func waitRTCTick(ctx context.Context, fd int, first *unix.RTCTime) time.Time {
	if err := unix.IoctlSetInt(fd, unix.RTC_UIE_ON, 0); err == nil {
		defer func() { _ = unix.IoctlSetInt(fd, unix.RTC_UIE_OFF, 0) }()
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(rtcTickTimeout/time.Millisecond))
		if err == nil && n > 0 {
			var buf [8]byte
			if _, err := unix.Read(fd, buf[:]); err == nil {
				return time.Now()
			}
		}
		return time.Time{}
	}
	deadline := time.Now().Add(rtcTickTimeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rt, err := unix.IoctlGetRTCTime(fd)
		if err != nil {
			return time.Time{}
		}
		if rt.Sec != first.Sec {
			return time.Now()
		}
		time.Sleep(time.Millisecond)
	}
	return time.Time{}
}
