package commands

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
	"github.com/qgakit/qgakit/agent/protocol"
)

func init() {
	groups = append(groups, func(d *dispatch.Dispatcher, env *Env) {
		d.Register("guest-shutdown", func(ctx context.Context, args dispatch.Args) (any, error) {
			return nil, guestShutdown(env, args)
		})
		for name, mode := range map[string]suspendMode{
			"guest-suspend-disk":   suspendDisk,
			"guest-suspend-ram":    suspendRAM,
			"guest-suspend-hybrid": suspendHybrid,
		} {
			d.Register(name, func(ctx context.Context, args dispatch.Args) (any, error) {
				return nil, guestSuspend(ctx, env, mode)
			})
		}
	})
}

// shutdownModes maps guest-shutdown's modes to the BusyBox-style program that qemu (since
// 2025, gitlab #2589) prefers, and to the /sbin/shutdown flag of 7.2.
var shutdownModes = map[string]struct{ program, flag string }{
	"powerdown": {"/sbin/poweroff", "-P"},
	"halt":      {"/sbin/halt", "-H"},
	"reboot":    {"/sbin/reboot", "-r"},
}

// guestShutdown runs /sbin/poweroff, /sbin/halt or /sbin/reboot without arguments when it is
// executable (BusyBox guests, where shutdown(8) does not exist) and 7.2's
// `/sbin/shutdown -h -P|-H|-r +0 "hypervisor initiated shutdown"` otherwise. The dispatcher
// sends nothing on success.
func guestShutdown(env *Env, args dispatch.Args) error {
	mode := "powerdown"
	if m, ok := args["mode"].(string); ok {
		mode = m
	}
	m, ok := shutdownModes[mode]
	if !ok {
		// Sic: the reference's text lacks the closing parenthesis.
		return protocol.Errorf("mode is invalid (valid values are: halt|powerdown|reboot")
	}
	path, argv := hostPath(env, m.program), []string{m.program}
	if unix.Access(path, unix.X_OK) != nil {
		path = hostPath(env, "/sbin/shutdown")
		argv = []string{"shutdown", "-h", m.flag, "+0", "hypervisor initiated shutdown"}
	}
	st, err := runChild(path, argv)
	if err != nil {
		return err
	}
	if st.signaled {
		return protocol.Errorf("child process has terminated abnormally")
	}
	if st.code != 0 {
		return protocol.Errorf("child process has failed to shutdown")
	}
	return nil
}

// childStatus is how a child process ended.
type childStatus struct {
	code     int  // exit status, when not signaled
	signaled bool // killed by a signal ("terminated abnormally")
}

// runChild runs a program the way the reference's fork + execl children do: in a new session,
// stdio on /dev/null, and waited for. A program that cannot be executed ends like the
// reference's child after a failed execl, with status 1; only a failure to create the process
// is an error, with the reference's text.
func runChild(path string, argv []string) (childStatus, error) {
	cmd := &exec.Cmd{Path: path, Args: argv, SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if err := cmd.Start(); err != nil {
		if isForkFailure(err) {
			return childStatus{}, protocol.Errorf("failed to create child process: %s", errtext.Strerror(err))
		}
		return childStatus{code: 1}, nil
	}
	err := cmd.Wait()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return childStatus{}, protocol.Errorf("failed to wait for child (pid: %d): %s", cmd.Process.Pid, errtext.Strerror(err))
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return childStatus{signaled: true}, nil
	}
	return childStatus{code: ws.ExitStatus()}, nil
}

// isForkFailure tells a failure to create a process (which the reference reports) from a
// failure to execute the program (which its child reports as exit status 1).
func isForkFailure(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOSYS)
}

// suspendMode indexes the per-mode names below, in the reference's order.
type suspendMode int

const (
	suspendDisk suspendMode = iota
	suspendRAM
	suspendHybrid
)

var (
	systemdSleepUnits = [...]string{"systemd-hibernate", "systemd-suspend", "systemd-hybrid-sleep"}
	systemctlVerbs    = [...]string{"hibernate", "suspend", "hybrid-sleep"}
	pmIsSupportedArgs = [...]string{"--hibernate", "--suspend", "--suspend-hybrid"}
	pmBinaries        = [...]string{"pm-hibernate", "pm-suspend", "pm-suspend-hybrid"}
)

// The sysfs power interface (Documentation/admin-guide/pm/sleep-states.rst).
const (
	sysPowerState    = "/sys/power/state"
	sysPowerMemSleep = "/sys/power/mem_sleep"
	sysPowerDisk     = "/sys/power/disk"
	sysPowerResume   = "/sys/power/resume"
	procSwaps        = "/proc/swaps"
)

const suspendUnsupported = "the requested suspend mode is not supported by the guest"

// guestSuspend tries systemd, then pm-utils, then sysfs, as qemu-ga 7.2.4+ does: the first
// method that supports the mode and succeeds ends the command (no reply); a supported method
// that fails falls through to the next one.
//
// Deviations from the reference, each for a guest the reference gets wrong:
//   - when a supported method failed and the later ones do not support the mode, the
//     reference answers success without suspending; we return that method's error;
//   - sysfs ram requires deep sleep (S3) in /sys/power/mem_sleep when that file exists: with
//     S3 disabled the guest lists "mem" with only s2idle, and the reference then freezes the
//     guest silently, where we answer "not supported";
//   - sysfs disk and hybrid require a resume device or an active swap, or say why not;
//   - sysfs hybrid exists (/sys/power/disk = suspend, then disk), where the reference says
//     "not supported" on guests without systemd or pm-utils;
//   - a helper killed by a signal has failed (the reference reads its exit status as 0).
func guestSuspend(ctx context.Context, env *Env, mode suspendMode) error {
	supported := false
	var lastErr error

	if status, found, _ := runHelper(env, "systemctl", "status", systemdSleepUnits[mode]); found && status > 0 && status < 4 {
		// systemctl status answers with LSB codes: 1-3 for a unit that exists but is not
		// running, 4 for an unknown unit.
		supported = true
		if lastErr = systemdSuspend(env, mode); lastErr == nil {
			return nil
		}
	}
	if status, found, err := runHelper(env, "pm-is-supported", pmIsSupportedArgs[mode]); found && err == nil && status == 0 {
		supported = true
		if lastErr = pmutilsSuspend(env, mode); lastErr == nil {
			return nil
		}
	}
	ok, why := sysfsSupportsMode(env, mode)
	if ok {
		supported = true
		if lastErr = sysfsSuspend(ctx, env, mode); lastErr == nil {
			return nil
		}
	}
	if !supported {
		if why != "" {
			return protocol.Errorf("%s: %s", suspendUnsupported, why)
		}
		return protocol.Errorf("%s", suspendUnsupported)
	}
	return lastErr
}

func systemdSuspend(env *Env, mode suspendMode) error {
	verb := systemctlVerbs[mode]
	status, found, err := runHelper(env, "systemctl", verb)
	switch {
	case err != nil:
		return err
	case !found:
		return protocol.Errorf("the helper program 'systemctl %s' was not found", verb)
	case status != 0:
		return protocol.Errorf("the helper program 'systemctl %s' returned an unexpected exit status code (%d)", verb, status)
	}
	return nil
}

func pmutilsSuspend(env *Env, mode suspendMode) error {
	bin := pmBinaries[mode]
	status, found, err := runHelper(env, bin)
	switch {
	case err != nil:
		return err
	case !found:
		return protocol.Errorf("the helper program '%s' was not found", bin)
	case status != 0:
		return protocol.Errorf("the helper program '%s' returned an unexpected exit status code (%d)", bin, status)
	}
	return nil
}

// runHelper runs a helper program found in Env.Path (or $PATH) with stdio on /dev/null and
// returns its exit status, like the reference's g_spawn_sync. A program that is not found is
// not an error (found is false); one that is found but cannot be run is, with glib's text.
func runHelper(env *Env, name string, args ...string) (status int, found bool, err error) {
	path, err := lookHelper(env, name)
	if errors.Is(err, fs.ErrNotExist) {
		return -1, false, nil
	}
	if err != nil {
		return -1, true, spawnError(name, err)
	}
	cmd := &exec.Cmd{Path: path, Args: append([]string{name}, args...)}
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			return -1, true, spawnError(name, err)
		}
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		// The reference takes WEXITSTATUS of a killed helper, 0, and so reports a killed
		// pm-suspend as success; we report it as the shell would, 128 + signal.
		return 128 + int(ws.Signal()), true, nil
	}
	return ws.ExitStatus(), true, nil
}

// spawnError is the reference's text for a helper that could not be started, quoting glib's
// message (curly quotes included).
func spawnError(name string, err error) error {
	return protocol.Errorf("failed to create child process, error 'Failed to execute child process \u201c%s\u201d (%s)'", name, errtext.Strerror(err))
}

// lookHelper finds an executable in Env.Path, or in $PATH when that is empty, with execvp's
// rules: a file that exists but cannot be executed is remembered (EACCES) and the search goes
// on. A name with a slash is not searched.
func lookHelper(env *Env, name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, unix.Access(name, unix.X_OK)
	}
	search := env.Path
	if search == "" {
		search = os.Getenv("PATH")
	}
	if search == "" {
		search = "/bin:/usr/bin"
	}
	var denied error
	for _, dir := range filepath.SplitList(search) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil || st.IsDir() {
			continue
		}
		if err := unix.Access(p, unix.X_OK); err != nil {
			denied = err
			continue
		}
		return p, nil
	}
	if denied != nil {
		return "", denied
	}
	return "", fs.ErrNotExist
}

// sysfsSupportsMode reports whether the kernel can do mode through /sys/power/state, and when
// it cannot although the state is listed, why not.
func sysfsSupportsMode(env *Env, mode suspendMode) (bool, string) {
	states, ok := readSysfsPrefix(hostPath(env, sysPowerState), 31)
	if !ok {
		return false, ""
	}
	switch mode {
	case suspendRAM:
		if !strings.Contains(states, "mem") {
			return false, ""
		}
		// Without the file (kernels before 4.10) "mem" is S3.
		if memSleep, err := os.ReadFile(hostPath(env, sysPowerMemSleep)); err == nil && !hasWord(string(memSleep), "deep") {
			return false, ""
		}
		return true, ""
	case suspendDisk, suspendHybrid:
		if !strings.Contains(states, "disk") {
			return false, ""
		}
		if mode == suspendHybrid {
			disk, err := os.ReadFile(hostPath(env, sysPowerDisk))
			if err != nil || !hasWord(string(disk), "suspend") {
				return false, ""
			}
		}
		if !hasResumeDevice(env) {
			return false, "no resume device for hibernation (/sys/power/resume is 0:0 and no swap is active)"
		}
		return true, ""
	}
	return false, ""
}

// hasResumeDevice reports whether the kernel has somewhere to write a hibernation image that
// a later boot will find: a configured resume device, or at least an active swap.
func hasResumeDevice(env *Env) bool {
	if b, err := os.ReadFile(hostPath(env, sysPowerResume)); err == nil {
		if v := strings.TrimSpace(string(b)); v != "" && v != "0:0" {
			return true
		}
	}
	lines, err := readLines(hostPath(env, procSwaps))
	if err != nil {
		return false
	}
	for _, l := range lines[min(1, len(lines)):] {
		if strings.TrimSpace(l) != "" {
			return true
		}
	}
	return false
}

// sysfsSuspend writes the state to /sys/power/state. The write returns when the guest has
// resumed (or fails at once, e.g. EBUSY or ENODEV), so it runs on its own goroutine and the
// handler waits for it or for ctx; a failure is reported with 7.2's text rather than being
// lost.
func sysfsSuspend(ctx context.Context, env *Env, mode suspendMode) error {
	done := make(chan error, 1)
	go func() { done <- sysfsSuspendSync(env, mode) }()
	select {
	case err := <-done:
		if err != nil {
			return protocol.Errorf("child process has failed to suspend")
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("suspend interrupted: %w", ctx.Err())
	}
}

func sysfsSuspendSync(env *Env, mode suspendMode) error {
	switch mode {
	case suspendRAM:
		// "mem" means whatever mem_sleep selects; make it S3, the only state the host sees.
		if prev, ok := sysfsSelection(env, sysPowerMemSleep); ok && prev != "deep" {
			if err := writeSysfs(env, sysPowerMemSleep, "deep"); err != nil {
				return err
			}
			// Back to the guest's own choice after resume; a failure there changes nothing
			// about the suspend that already happened.
			defer func() { _ = writeSysfs(env, sysPowerMemSleep, prev) }()
		}
		return writeSysfs(env, sysPowerState, "mem")
	case suspendHybrid:
		prev, ok := sysfsSelection(env, sysPowerDisk)
		if err := writeSysfs(env, sysPowerDisk, "suspend"); err != nil {
			return err
		}
		if ok && prev != "suspend" {
			// After resume, leave hibernation as it was configured.
			defer func() { _ = writeSysfs(env, sysPowerDisk, prev) }()
		}
		return writeSysfs(env, sysPowerState, "disk")
	default:
		return writeSysfs(env, sysPowerState, "disk")
	}
}

// sysfsSelection returns the bracketed choice of a sysfs selection file ("s2idle [deep]").
func sysfsSelection(env *Env, path string) (string, bool) {
	b, err := os.ReadFile(hostPath(env, path))
	if err != nil {
		return "", false
	}
	for _, w := range strings.Fields(string(b)) {
		if strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return w[1 : len(w)-1], true
		}
	}
	return "", false
}

// writeSysfs writes a sysfs attribute in one write, without creating it.
func writeSysfs(env *Env, path, value string) error {
	// O_TRUNC as a shell redirection does: harmless on sysfs, and a plain file (in tests)
	// then holds exactly what was written.
	f, err := os.OpenFile(hostPath(env, path), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, werr)
	}
	if cerr != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, cerr)
	}
	return nil
}

// readSysfsPrefix reads at most n bytes, as the reference reads /sys/power/state into a
// 32-byte buffer.
func readSysfsPrefix(path string, n int) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	buf := make([]byte, n)
	// One read, as the reference does; an error with no data is "not supported".
	k, _ := f.Read(buf)
	if k <= 0 {
		return "", false
	}
	return string(buf[:k]), true
}

// hasWord reports whether a sysfs list ("s2idle [deep]") offers w, selected or not.
func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.Trim(f, "[]") == w {
			return true
		}
	}
	return false
}
