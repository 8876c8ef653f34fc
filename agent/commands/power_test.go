package commands

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch"
)

// sysArgvScript writes an executable script that logs its name and each argument in brackets
// ("shutdown [-h] [-P]"), so argument boundaries show, and then runs body.
func sysArgvScript(t *testing.T, path, log, body string) {
	t.Helper()
	sysWriteFile(t, path, `#!/bin/sh
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf ' [%s]' "$a"; done; echo; } >> '`+log+`'
`+body+"\n", 0o755)
}

func TestShutdownInvalidModeRunsNothing(t *testing.T) {
	root := t.TempDir()
	log := filepath.Join(t.TempDir(), "log")
	sysArgvScript(t, filepath.Join(root, "sbin/shutdown"), log, "")
	err := guestShutdown(sysEnv(t, root), dispatch.Args{"mode": "poweroff"})
	// Sic: the reference's text has no closing parenthesis (checked on it).
	sysWantError(t, err, "mode is invalid (valid values are: halt|powerdown|reboot")
	if got := sysLog(t, log); got != nil {
		t.Errorf("ran %q", got)
	}
}

func TestShutdownPrefersBusyBoxStylePrograms(t *testing.T) {
	for _, c := range []struct {
		args dispatch.Args
		want string
	}{
		{dispatch.Args{}, "poweroff"},
		{dispatch.Args{"mode": "powerdown"}, "poweroff"},
		{dispatch.Args{"mode": "halt"}, "halt"},
		{dispatch.Args{"mode": "reboot"}, "reboot"},
	} {
		root := t.TempDir()
		log := filepath.Join(t.TempDir(), "log")
		for _, p := range []string{"poweroff", "halt", "reboot", "shutdown"} {
			sysArgvScript(t, filepath.Join(root, "sbin", p), log, "")
		}
		if err := guestShutdown(sysEnv(t, root), c.args); err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		// No arguments at all: BusyBox's poweroff takes none that shutdown(8) takes.
		if got := strings.Join(sysLog(t, log), ","); got != c.want {
			t.Errorf("%v ran %q, want %q", c.args, got, c.want)
		}
	}
}

func TestShutdownFallsBackToShutdown(t *testing.T) {
	for mode, flag := range map[string]string{"": "-P", "powerdown": "-P", "halt": "-H", "reboot": "-r"} {
		root := t.TempDir()
		log := filepath.Join(t.TempDir(), "log")
		sysArgvScript(t, filepath.Join(root, "sbin/shutdown"), log, "")
		// Present but not executable: not used.
		sysWriteFile(t, filepath.Join(root, "sbin/poweroff"), "#!/bin/sh\n", 0o644)
		args := dispatch.Args{}
		if mode != "" {
			args["mode"] = mode
		}
		if err := guestShutdown(sysEnv(t, root), args); err != nil {
			t.Fatalf("mode %q: %v", mode, err)
		}
		want := "shutdown [-h] [" + flag + "] [+0] [hypervisor initiated shutdown]"
		if got := strings.Join(sysLog(t, log), ","); got != want {
			t.Errorf("mode %q ran %q, want %q", mode, got, want)
		}
	}
}

func TestShutdownChildRunsDetachedWithNullStdio(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	sysWriteFile(t, filepath.Join(root, "sbin/poweroff"), `#!/bin/sh
set -- $(cut -d' ' -f6 /proc/$$/stat)
echo "pid=$$ sid=$1 $(readlink /proc/$$/fd/0) $(readlink /proc/$$/fd/1) $(readlink /proc/$$/fd/2)" > '`+out+`'
`, 0o755)
	if err := guestShutdown(sysEnv(t, root), dispatch.Args{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 5 || strings.TrimPrefix(f[0], "pid=") != strings.TrimPrefix(f[1], "sid=") ||
		f[2] != "/dev/null" || f[3] != "/dev/null" || f[4] != "/dev/null" {
		t.Errorf("poweroff saw %q, want a session leader with stdio on /dev/null", b)
	}
}

func TestShutdownFailures(t *testing.T) {
	for _, c := range []struct{ name, body, desc string }{
		{"fails", "exit 1", "child process has failed to shutdown"},
		{"killed", "kill -9 $$", "child process has terminated abnormally"},
		// Like the reference's child after a failed execl.
		{"missing", "", "child process has failed to shutdown"},
	} {
		root := t.TempDir()
		if c.name != "missing" {
			sysArgvScript(t, filepath.Join(root, "sbin/shutdown"), filepath.Join(t.TempDir(), "log"), c.body)
		}
		err := guestShutdown(sysEnv(t, root), dispatch.Args{"mode": "halt"})
		sysWantError(t, err, c.desc)
	}
}

// sysSuspendEnv is a guest with /sys/power files under Root and helper programs (written by
// the test) in Path, all logging to the returned file.
func sysSuspendEnv(t *testing.T, files map[string]string) (*Env, string) {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		sysWriteFile(t, filepath.Join(root, p), content, 0o644)
	}
	env := sysEnv(t, root)
	return env, filepath.Join(t.TempDir(), "helpers.log")
}

// sysSystemctl writes a systemctl whose "status" exits with status and whose sleep verbs exit
// with verb.
func sysSystemctl(t *testing.T, env *Env, log string, status, verb int) {
	t.Helper()
	sysArgvScript(t, filepath.Join(env.Path, "systemctl"), log,
		`case "$1" in status) exit `+itoa(uint32(status))+`;; *) exit `+itoa(uint32(verb))+`;; esac`)
}

func sysFile(t *testing.T, env *Env, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.Root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var sysModes = []struct {
	mode                               suspendMode
	unit, verb, pmArg, pmBin, sysState string
}{
	{suspendDisk, "systemd-hibernate", "hibernate", "--hibernate", "pm-hibernate", "disk"},
	{suspendRAM, "systemd-suspend", "suspend", "--suspend", "pm-suspend", "mem"},
	{suspendHybrid, "systemd-hybrid-sleep", "hybrid-sleep", "--suspend-hybrid", "pm-suspend-hybrid", "disk"},
}

func TestSuspendThroughSystemd(t *testing.T) {
	for _, m := range sysModes {
		for _, status := range []int{1, 2, 3} {
			env, log := sysSuspendEnv(t, nil)
			sysSystemctl(t, env, log, status, 0)
			sysArgvScript(t, filepath.Join(env.Path, "pm-is-supported"), log, "exit 0")
			if err := guestSuspend(context.Background(), env, m.mode); err != nil {
				t.Fatalf("%s: %v", m.verb, err)
			}
			want := "systemctl [status] [" + m.unit + "],systemctl [" + m.verb + "]"
			if got := strings.Join(sysLog(t, log), ","); got != want {
				t.Errorf("%s with status %d ran %q, want %q", m.verb, status, got, want)
			}
		}
	}
}

func TestSuspendThroughPmUtils(t *testing.T) {
	for _, m := range sysModes {
		// systemctl status 0 (running) and 4 (no such unit) both mean "not through systemd".
		for _, status := range []int{0, 4} {
			env, log := sysSuspendEnv(t, nil)
			sysSystemctl(t, env, log, status, 0)
			sysArgvScript(t, filepath.Join(env.Path, "pm-is-supported"), log, "exit 0")
			sysArgvScript(t, filepath.Join(env.Path, m.pmBin), log, "exit 0")
			if err := guestSuspend(context.Background(), env, m.mode); err != nil {
				t.Fatalf("%s: %v", m.pmBin, err)
			}
			want := "systemctl [status] [" + m.unit + "],pm-is-supported [" + m.pmArg + "]," + m.pmBin
			if got := strings.Join(sysLog(t, log), ","); got != want {
				t.Errorf("%s ran %q, want %q", m.pmBin, got, want)
			}
		}
	}
}

func TestSuspendFailedMethodFallsThrough(t *testing.T) {
	env, log := sysSuspendEnv(t, nil)
	sysSystemctl(t, env, log, 3, 1)
	sysArgvScript(t, filepath.Join(env.Path, "pm-is-supported"), log, "exit 0")
	sysArgvScript(t, filepath.Join(env.Path, "pm-suspend"), log, "exit 0")
	if err := guestSuspend(context.Background(), env, suspendRAM); err != nil {
		t.Fatal(err)
	}
	want := "systemctl [status] [systemd-suspend],systemctl [suspend],pm-is-supported [--suspend],pm-suspend"
	if got := strings.Join(sysLog(t, log), ","); got != want {
		t.Errorf("ran %q, want %q", got, want)
	}
}

// Deviation: the reference (7.2.22 here, checked with a systemctl that fails) answers success
// without suspending when the only method that supports the mode failed; we return its error.
func TestSuspendFailureOfTheOnlySupportedMethodIsReported(t *testing.T) {
	env, log := sysSuspendEnv(t, nil)
	sysSystemctl(t, env, log, 3, 5)
	err := guestSuspend(context.Background(), env, suspendRAM)
	sysWantError(t, err, "the helper program 'systemctl suspend' returned an unexpected exit status code (5)")

	env, log = sysSuspendEnv(t, nil)
	sysArgvScript(t, filepath.Join(env.Path, "pm-is-supported"), log, "exit 0")
	err = guestSuspend(context.Background(), env, suspendDisk)
	sysWantError(t, err, "the helper program 'pm-hibernate' was not found")

	env, log = sysSuspendEnv(t, nil)
	sysArgvScript(t, filepath.Join(env.Path, "pm-is-supported"), log, "exit 0")
	sysWriteFile(t, filepath.Join(env.Path, "pm-suspend-hybrid"), "#!/bin/sh\n", 0o644)
	err = guestSuspend(context.Background(), env, suspendHybrid)
	sysWantError(t, err, "failed to create child process, error 'Failed to execute child process \u201cpm-suspend-hybrid\u201d (Permission denied)'")

	// Deviation: a helper killed by a signal is no success (the reference's WEXITSTATUS is 0).
	env, log = sysSuspendEnv(t, nil)
	sysArgvScript(t, filepath.Join(env.Path, "pm-is-supported"), log, "exit 0")
	sysArgvScript(t, filepath.Join(env.Path, "pm-suspend"), log, "kill -9 $$")
	err = guestSuspend(context.Background(), env, suspendRAM)
	sysWantError(t, err, "the helper program 'pm-suspend' returned an unexpected exit status code (137)")
}

func TestSuspendNotSupportedAnywhere(t *testing.T) {
	for _, m := range sysModes {
		env, log := sysSuspendEnv(t, map[string]string{"sys/power/state": "freeze\n"})
		sysSystemctl(t, env, log, 4, 0)
		sysArgvScript(t, filepath.Join(env.Path, "pm-is-supported"), log, "exit 1")
		err := guestSuspend(context.Background(), env, m.mode)
		sysWantError(t, err, "the requested suspend mode is not supported by the guest")
		if got := sysFile(t, env, "sys/power/state"); got != "freeze\n" {
			t.Errorf("%s wrote %q to /sys/power/state", m.verb, got)
		}
	}
	// A helper that is there but cannot run does not count as support (systemctl here).
	env, _ := sysSuspendEnv(t, nil)
	sysWriteFile(t, filepath.Join(env.Path, "systemctl"), "#!/bin/sh\nexit 3\n", 0o644)
	sysWantError(t, guestSuspend(context.Background(), env, suspendRAM), "the requested suspend mode is not supported by the guest")
}

func TestSuspendRAMThroughSysfs(t *testing.T) {
	t.Run("without mem_sleep", func(t *testing.T) {
		env, _ := sysSuspendEnv(t, map[string]string{"sys/power/state": "freeze mem disk\n"})
		if err := guestSuspend(context.Background(), env, suspendRAM); err != nil {
			t.Fatal(err)
		}
		if got := sysFile(t, env, "sys/power/state"); got != "mem" {
			t.Errorf("/sys/power/state = %q, want mem", got)
		}
	})
	t.Run("deep selected", func(t *testing.T) {
		env, _ := sysSuspendEnv(t, map[string]string{"sys/power/state": "freeze mem\n", "sys/power/mem_sleep": "s2idle [deep]\n"})
		if err := guestSuspend(context.Background(), env, suspendRAM); err != nil {
			t.Fatal(err)
		}
		if got, ms := sysFile(t, env, "sys/power/state"), sysFile(t, env, "sys/power/mem_sleep"); got != "mem" || ms != "s2idle [deep]\n" {
			t.Errorf("state %q, mem_sleep %q; want mem and mem_sleep untouched", got, ms)
		}
	})
	t.Run("deep offered, s2idle selected", func(t *testing.T) {
		env, _ := sysSuspendEnv(t, map[string]string{"sys/power/state": "freeze mem\n", "sys/power/mem_sleep": "[s2idle] deep\n"})
		if err := guestSuspend(context.Background(), env, suspendRAM); err != nil {
			t.Fatal(err)
		}
		// deep was selected for the suspend, and the guest's choice put back after it.
		if got, ms := sysFile(t, env, "sys/power/state"), sysFile(t, env, "sys/power/mem_sleep"); got != "mem" || ms != "s2idle" {
			t.Errorf("state %q, mem_sleep %q; want mem, then s2idle restored", got, ms)
		}
	})
	// Deviation: with S3 disabled in QEMU the guest lists mem with only s2idle, and the
	// reference's write freezes the guest silently; we answer "not supported".
	t.Run("only s2idle is not supported", func(t *testing.T) {
		env, _ := sysSuspendEnv(t, map[string]string{"sys/power/state": "freeze mem disk\n", "sys/power/mem_sleep": "[s2idle]\n"})
		sysWantError(t, guestSuspend(context.Background(), env, suspendRAM), "the requested suspend mode is not supported by the guest")
		if got := sysFile(t, env, "sys/power/state"); got != "freeze mem disk\n" {
			t.Errorf("/sys/power/state was written: %q", got)
		}
	})
}

func TestSuspendDiskThroughSysfs(t *testing.T) {
	noResume := "the requested suspend mode is not supported by the guest: no resume device for hibernation (/sys/power/resume is 0:0 and no swap is active)"
	swapsHeader := "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
	for _, c := range []struct {
		name  string
		files map[string]string
		err   string
	}{
		{"resume device", map[string]string{"sys/power/resume": "254:2\n", "proc/swaps": swapsHeader}, ""},
		{"active swap", map[string]string{"sys/power/resume": "0:0\n", "proc/swaps": swapsHeader + "/dev/vdb partition 1048572 0 -2\n"}, ""},
		// Deviation: the reference writes "disk" anyway, and the kernel then fails or
		// hibernates to a swap no boot will resume from.
		{"neither", map[string]string{"sys/power/resume": "0:0\n", "proc/swaps": swapsHeader}, noResume},
		{"nothing readable", map[string]string{}, noResume},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.files["sys/power/state"] = "freeze mem disk\n"
			env, _ := sysSuspendEnv(t, c.files)
			err := guestSuspend(context.Background(), env, suspendDisk)
			if c.err != "" {
				sysWantError(t, err, c.err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := sysFile(t, env, "sys/power/state"); got != "disk" {
				t.Errorf("/sys/power/state = %q, want disk", got)
			}
		})
	}
}

// Beyond the reference, which has no sysfs hybrid: /sys/power/disk = suspend, then disk.
func TestSuspendHybridThroughSysfs(t *testing.T) {
	env, _ := sysSuspendEnv(t, map[string]string{
		"sys/power/state":  "freeze mem disk\n",
		"sys/power/disk":   "[platform] shutdown reboot suspend test_resume\n",
		"sys/power/resume": "254:2\n",
	})
	if err := guestSuspend(context.Background(), env, suspendHybrid); err != nil {
		t.Fatal(err)
	}
	if st, d := sysFile(t, env, "sys/power/state"), sysFile(t, env, "sys/power/disk"); st != "disk" || d != "platform" {
		t.Errorf("state %q, disk %q; want disk, and platform restored", st, d)
	}

	env, _ = sysSuspendEnv(t, map[string]string{
		"sys/power/state":  "freeze mem disk\n",
		"sys/power/disk":   "[platform] shutdown reboot\n",
		"sys/power/resume": "254:2\n",
	})
	sysWantError(t, guestSuspend(context.Background(), env, suspendHybrid), "the requested suspend mode is not supported by the guest")
}

const sysHelperEnv = "QGAKIT_SYS_TEST_HELPER"

// A write to /sys/power/state that fails at once must be an error, not a silent success. A
// read-only state file makes the write fail for anyone but root, so as root the check runs in
// a copy of this test binary as nobody.
func TestSuspendWriteFailureIsReported(t *testing.T) {
	if os.Getenv(sysHelperEnv) == "suspend-write" {
		env := &Env{Root: os.Getenv("QGAKIT_SYS_ROOT"), Path: "/nonexistent"}
		sysWantError(t, guestSuspend(context.Background(), env, suspendRAM), "child process has failed to suspend")
		return
	}
	dir, err := os.MkdirTemp("", "qgakit-suspend-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "root")
	sysWriteFile(t, filepath.Join(root, "sys/power/state"), "freeze mem\n", 0o444)
	if os.Geteuid() != 0 {
		env := &Env{Root: root, Path: "/nonexistent"}
		sysWantError(t, guestSuspend(context.Background(), env, suspendRAM), "child process has failed to suspend")
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyExe := filepath.Join(dir, "test.bin")
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(copyExe, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	src.Close()
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(copyExe, "-test.run=^TestSuspendWriteFailureIsReported$", "-test.v")
	cmd.Dir = "/"
	cmd.Env = []string{sysHelperEnv + "=suspend-write", "QGAKIT_SYS_ROOT=" + root, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSuspendWriteFailureIsReported") {
		t.Errorf("unprivileged run: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "sys/power/state")); string(got) != "freeze mem\n" {
		t.Errorf("/sys/power/state = %q", got)
	}
}
