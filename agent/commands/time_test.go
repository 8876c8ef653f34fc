package commands

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qgakit/qgakit/agent/dispatch"
)

func TestGetTimeIsTheSystemClockInNanoseconds(t *testing.T) {
	before := time.Now().UnixNano()
	got := guestGetTime()
	after := time.Now().UnixNano()
	if got < before || got > after {
		t.Errorf("get-time = %d, not within [%d, %d]", got, before, after)
	}
}

// None of these tests may set the clock of the machine that runs them: each one fails, or
// reads the RTC only, before settimeofday.

func TestSetTimeUnsupportedWithoutRTCAndHwclock(t *testing.T) {
	for _, args := range []dispatch.Args{{}, {"time": time.Now().UnixNano()}} {
		env := sysEnv(t, t.TempDir())
		err := guestSetTime(context.Background(), env, args)
		sysWantError(t, err, "this feature or command is not currently supported")
	}
}

// Deviation: 7.2 answers "unsupported" whenever /sbin/hwclock is missing, even with an RTC;
// we drive the RTC ourselves. A plain file stands in for /dev/rtc here, so the ioctl fails
// (ENOTTY) with the reference's hwclock text, which shows the RTC was used.
func TestSetTimeUsesTheRTCWithoutHwclock(t *testing.T) {
	for _, dev := range []string{"dev/rtc", "dev/rtc0"} {
		env := sysEnv(t, t.TempDir())
		sysWriteFile(t, filepath.Join(env.Root, dev), "", 0o600)
		err := guestSetTime(context.Background(), env, dispatch.Args{})
		sysWantError(t, err, "hwclock failed to set hardware clock to system time")
	}
}

// An RTC whose ioctls fail leaves the work to hwclock when there is one.
func TestSetTimeFallsBackToHwclockWhenTheRTCFails(t *testing.T) {
	env := sysEnv(t, t.TempDir())
	sysWriteFile(t, filepath.Join(env.Root, "dev/rtc0"), "", 0o600)
	log := filepath.Join(t.TempDir(), "log")
	sysArgvScript(t, filepath.Join(env.Path, "hwclock"), log, "exit 0")
	if err := guestSetTime(context.Background(), env, dispatch.Args{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(sysLog(t, log), ","); got != "hwclock [-s]" {
		t.Errorf("ran %q, want hwclock -s", got)
	}
}

func TestSetTimeFallsBackToHwclock(t *testing.T) {
	for _, c := range []struct {
		name, body, desc string
		inSbin           bool
	}{
		{"success in PATH", "exit 0", "", false},
		{"success in /sbin", "exit 0", "", true},
		{"failure", "exit 1", "hwclock failed to set hardware clock to system time", false},
		{"killed", "kill -9 $$", "child process has terminated abnormally", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := sysEnv(t, t.TempDir())
			log := filepath.Join(t.TempDir(), "log")
			dir := env.Path
			if c.inSbin {
				dir = filepath.Join(env.Root, "sbin")
			}
			sysArgvScript(t, filepath.Join(dir, "hwclock"), log, c.body)
			err := guestSetTime(context.Background(), env, dispatch.Args{})
			if c.desc == "" && err != nil {
				t.Fatal(err)
			}
			if c.desc != "" {
				sysWantError(t, err, c.desc)
			}
			// Without a time: the system clock from the RTC.
			if got := strings.Join(sysLog(t, log), ","); got != "hwclock [-s]" {
				t.Errorf("ran %q, want hwclock -s", got)
			}
		})
	}
}

// The reference's range check (checked on it: no strerror is appended), before anything runs.
func TestSetTimeRejectsTimesOutsideTheReferenceRange(t *testing.T) {
	for _, ns := range []int64{
		-1_000_000_000_000, // 1969
		time.Date(2070, 6, 1, 0, 0, 0, 0, time.UTC).UnixNano(), // 2070
		4_000_000_000_000_000_000,                              // 2096
	} {
		env := sysEnv(t, t.TempDir())
		log := filepath.Join(t.TempDir(), "log")
		sysArgvScript(t, filepath.Join(env.Path, "hwclock"), log, "exit 0")
		err := guestSetTime(context.Background(), env, dispatch.Args{"time": ns})
		sysWantError(t, err, "Invalid time")
		if got := sysLog(t, log); got != nil {
			t.Errorf("time %d: hwclock ran: %q", ns, got)
		}
	}
}

func TestSetTimeReadsRTCConventionFromAdjtime(t *testing.T) {
	root := t.TempDir()
	env := &Env{Root: root}
	if rtcLocal(env) {
		t.Error("no /etc/adjtime means UTC")
	}
	sysWriteFile(t, filepath.Join(root, "etc/adjtime"), "0.0 0 0.0\n0\nLOCAL\n", 0o644)
	if !rtcLocal(env) {
		t.Error("LOCAL in /etc/adjtime not seen")
	}
	sysWriteFile(t, filepath.Join(root, "etc/adjtime"), "0.0 0 0.0\n0\nUTC\n", 0o644)
	if rtcLocal(env) {
		t.Error("UTC in /etc/adjtime read as local")
	}
}
