package commands

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/protocol"
)

// sysScript writes an executable shell script that appends "<name> <args>" to log and then
// runs body.
func sysScript(t *testing.T, path, log, body string) {
	t.Helper()
	sysWriteFile(t, path, "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> '"+log+"'\n"+body+"\n", 0o755)
}

// sysLog returns the lines a script logged, or nil when it never ran.
func sysLog(t *testing.T, log string) []string {
	t.Helper()
	b, err := os.ReadFile(log)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// sysWantError checks that err is a GenericError with exactly desc.
func sysWantError(t *testing.T, err error, desc string) {
	t.Helper()
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error = %v (%T), want GenericError %q", err, err, desc)
	}
	if pe.Class != protocol.ClassGenericError || pe.Desc != desc {
		t.Fatalf("error = %s: %q, want GenericError: %q", pe.Class, pe.Desc, desc)
	}
}

// sysIsFrozen probes a mount point: FITHAW succeeds only on a frozen filesystem (it then
// thaws it, so the probe is for states that must be thawed).
func sysIsFrozen(t *testing.T, dir string) bool {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	return ioctlNoArg(fd, ioctlFITHAW) == nil
}

func sysMarkerExists(t *testing.T, env *Env) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(env.State.Dir(), "qga.state.isfrozen"))
	return err == nil
}

func TestFsfreezeStatusIsTheAgentsState(t *testing.T) {
	env := sysEnv(t, t.TempDir())
	if got := fsfreezeStatus(env); got != "thawed" {
		t.Errorf("status = %q, want thawed", got)
	}
	if err := env.State.SetFrozen(true); err != nil {
		t.Fatal(err)
	}
	if got := fsfreezeStatus(env); got != "frozen" {
		t.Errorf("status = %q, want frozen", got)
	}
}

func TestFsfreezeHookErrors(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "hook.log")
	sysWriteFile(t, filepath.Join(dir, "not-executable"), "#!/bin/sh\nexit 0\n", 0o644)
	sysScript(t, filepath.Join(dir, "fails"), log, "exit 3")
	sysScript(t, filepath.Join(dir, "killed"), log, "kill -9 $$")
	sysWriteFile(t, filepath.Join(dir, "bad-interpreter"), "#!/nonexistent/sh\n", 0o755)
	cases := []struct{ hook, desc string }{
		{filepath.Join(dir, "missing"), "can't access fsfreeze hook '" + filepath.Join(dir, "missing") + "': No such file or directory"},
		// Verified on the reference: even root needs an x bit.
		{filepath.Join(dir, "not-executable"), "can't access fsfreeze hook '" + filepath.Join(dir, "not-executable") + "': Permission denied"},
		{filepath.Join(dir, "fails"), "fsfreeze hook has failed with status 3"},
		{filepath.Join(dir, "killed"), "fsfreeze hook has terminated abnormally"},
		// The reference's child exits 1 when execl fails.
		{filepath.Join(dir, "bad-interpreter"), "fsfreeze hook has failed with status 1"},
	}
	for _, c := range cases {
		t.Run(filepath.Base(c.hook), func(t *testing.T) {
			root := t.TempDir() // no mount table: a freeze that got past the hook would fail differently
			env := sysEnv(t, root)
			env.FsfreezeHook = c.hook
			_, err := fsfreezeFreeze(env)
			sysWantError(t, err, c.desc)
			if env.State.Frozen() || sysMarkerExists(t, env) {
				t.Error("a failed freeze hook left the agent frozen")
			}
			// thaw reports the hook's error too, after leaving the frozen state (verified on
			// the reference, which was started frozen).
			if err := env.State.SetFrozen(true); err != nil {
				t.Fatal(err)
			}
			sysMountinfo(t, root)
			_, err = fsfreezeThaw(env)
			sysWantError(t, err, c.desc)
			if env.State.Frozen() {
				t.Error("thaw with a failing hook left the agent frozen")
			}
		})
	}
	if got := sysLog(t, log); strings.Join(got, ",") != "fails freeze,fails thaw,killed freeze,killed thaw" {
		t.Errorf("hook runs = %q", got)
	}
}

func TestFsfreezeHookRunsInItsOwnSessionWithNullStdio(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	sysWriteFile(t, filepath.Join(dir, "hook"), `#!/bin/sh
set -- "$1" $(cut -d' ' -f6 /proc/$$/stat)
echo "$1 pid=$$ sid=$2 stdin=$(readlink /proc/$$/fd/0) stdout=$(readlink /proc/$$/fd/1) stderr=$(readlink /proc/$$/fd/2)" > '`+out+`'
`, 0o755)
	root := t.TempDir()
	sysMountinfo(t, root)
	env := sysEnv(t, root)
	env.FsfreezeHook = filepath.Join(dir, "hook")
	if _, err := fsfreezeThaw(env); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 6 || f[0] != "thaw" || strings.TrimPrefix(f[1], "pid=") != strings.TrimPrefix(f[2], "sid=") ||
		f[3] != "stdin=/dev/null" || f[4] != "stdout=/dev/null" || f[5] != "stderr=/dev/null" {
		t.Errorf("hook saw %q, want thaw as a session leader with stdio on /dev/null", b)
	}
}

// On tmpfs FIFREEZE is EOPNOTSUPP for root (ignored: nothing frozen) and EPERM for anyone
// else (an error); either way the agent ends thawed, and only a freeze error runs the thaw
// hook.
func TestFsfreezeOnUnfreezableFilesystems(t *testing.T) {
	root := sysTmpfsRoot(t)
	sysMkdir(t, filepath.Join(root, "mnt/a"), filepath.Join(root, "mnt/b"))
	sysMountinfo(t, root, "0:90 /mnt/a ext4 /dev/x", "8:1 /mnt/a ext4 /dev/sda1", "8:2 /mnt/b xfs /dev/sda2")
	env := sysEnv(t, root)
	log := filepath.Join(t.TempDir(), "hook.log")
	env.FsfreezeHook = filepath.Join(t.TempDir(), "hook")
	sysScript(t, env.FsfreezeHook, log, "")
	n, err := fsfreezeFreeze(env)
	if os.Geteuid() == 0 {
		if err != nil || n != 0 {
			t.Fatalf("freeze = %d, %v; want 0 (EOPNOTSUPP is not an error)", n, err)
		}
		if got := strings.Join(sysLog(t, log), ","); got != "hook freeze" {
			t.Errorf("hook runs = %q, want only the freeze", got)
		}
	} else {
		// Reverse mount order: /mnt/b is the first one tried.
		sysWantError(t, err, "failed to freeze /mnt/b: Operation not permitted")
		if got := strings.Join(sysLog(t, log), ","); got != "hook freeze,hook thaw" {
			t.Errorf("hook runs = %q, want freeze then thaw", got)
		}
	}
	if env.State.Frozen() || sysMarkerExists(t, env) {
		t.Error("the agent stayed frozen with nothing frozen")
	}
}

func TestFsfreezeFreezeAndThawARealFilesystem(t *testing.T) {
	root := sysTmpfsRoot(t)
	mnt := filepath.Join(root, "mnt/ext")
	major, minor := sysLoopExt4(t, mnt)
	dev := func(maj, min uint32) string { return itoa(maj) + ":" + itoa(min) }
	sysMkdir(t, filepath.Join(root, "mnt/tmpfs"))
	// A second mount of the same device at a path that cannot be opened: were it not skipped
	// as a bind mount (qemu 10.0), the freeze would fail on it.
	sysMountinfo(t, root,
		"0:90 /mnt/tmpfs tmpfs tmpfs",
		dev(major, minor)+" /mnt/ext ext4 /dev/loop",
		"8:99 /mnt/tmpfs xfs /dev/sdz",
		dev(major, minor)+" /mnt/bind-of-ext ext4 /dev/loop")
	env := sysEnv(t, root)
	log := filepath.Join(t.TempDir(), "hook.log")
	env.FsfreezeHook = filepath.Join(t.TempDir(), "hook")
	sysScript(t, env.FsfreezeHook, log, "")

	n, err := fsfreezeFreeze(env)
	if err != nil || n != 1 {
		t.Fatalf("freeze = %d, %v; want 1", n, err)
	}
	if !env.State.Frozen() || !sysMarkerExists(t, env) || fsfreezeStatus(env) != "frozen" {
		t.Fatal("freeze did not enter the persisted frozen state")
	}
	n, err = fsfreezeThaw(env)
	if err != nil || n != 1 {
		t.Fatalf("thaw = %d, %v; want 1", n, err)
	}
	if env.State.Frozen() || sysMarkerExists(t, env) {
		t.Error("thaw did not leave the frozen state")
	}
	// Nothing is frozen any more: a second thaw counts nothing but still runs the hook.
	if n, err = fsfreezeThaw(env); err != nil || n != 0 {
		t.Errorf("second thaw = %d, %v; want 0", n, err)
	}
	if got := strings.Join(sysLog(t, log), ","); got != "hook freeze,hook thaw,hook thaw" {
		t.Errorf("hook runs = %q", got)
	}
}

func TestFsfreezeErrorThawsWhatWasFrozen(t *testing.T) {
	root := sysTmpfsRoot(t)
	mnt := filepath.Join(root, "mnt/ext")
	major, minor := sysLoopExt4(t, mnt)
	// Reverse order: the ext4 is frozen first, then /mnt/gone fails.
	sysMountinfo(t, root, "8:97 /mnt/gone ext4 /dev/sdy", itoa(major)+":"+itoa(minor)+" /mnt/ext ext4 /dev/loop")
	env := sysEnv(t, root)
	log := filepath.Join(t.TempDir(), "hook.log")
	env.FsfreezeHook = filepath.Join(t.TempDir(), "hook")
	sysScript(t, env.FsfreezeHook, log, "")
	_, err := fsfreezeFreeze(env)
	sysWantError(t, err, "failed to open /mnt/gone: No such file or directory")
	if sysIsFrozen(t, mnt) {
		t.Error("the failed freeze left the filesystem frozen")
	}
	if env.State.Frozen() || sysMarkerExists(t, env) {
		t.Error("the failed freeze left the agent frozen")
	}
	if got := strings.Join(sysLog(t, log), ","); got != "hook freeze,hook thaw" {
		t.Errorf("hook runs = %q, want freeze then thaw", got)
	}
}

func TestCleanupThawsOnlyWhenFrozen(t *testing.T) {
	root := sysTmpfsRoot(t)
	mnt := filepath.Join(root, "mnt/ext")
	major, minor := sysLoopExt4(t, mnt)
	sysMountinfo(t, root, itoa(major)+":"+itoa(minor)+" /mnt/ext ext4 /dev/loop")
	env := sysEnv(t, root)
	log := filepath.Join(t.TempDir(), "hook.log")
	env.FsfreezeHook = filepath.Join(t.TempDir(), "hook")
	sysScript(t, env.FsfreezeHook, log, "")

	if err := Cleanup(env); err != nil {
		t.Fatal(err)
	}
	if got := sysLog(t, log); got != nil {
		t.Fatalf("cleanup of a thawed agent ran the hook: %q", got)
	}
	if n, err := fsfreezeFreeze(env); err != nil || n != 1 {
		t.Fatalf("freeze = %d, %v", n, err)
	}
	if err := Cleanup(env); err != nil {
		t.Fatal(err)
	}
	if sysIsFrozen(t, mnt) || env.State.Frozen() {
		t.Error("cleanup left the guest frozen")
	}
	if got := strings.Join(sysLog(t, log), ","); got != "hook freeze,hook thaw" {
		t.Errorf("hook runs = %q", got)
	}
}

// The dispatcher refuses a freeze while frozen; the handler does too, with the same reply
// (the reference's, checked on it), before the hook or any FIFREEZE.
func TestFsfreezeFreezeWhileFrozen(t *testing.T) {
	root := t.TempDir()
	sysMountinfo(t, root)
	env := sysEnv(t, root)
	log := filepath.Join(t.TempDir(), "hook.log")
	env.FsfreezeHook = filepath.Join(t.TempDir(), "hook")
	sysScript(t, env.FsfreezeHook, log, "")
	if err := env.State.SetFrozen(true); err != nil {
		t.Fatal(err)
	}
	_, err := fsfreezeFreeze(env)
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Class != protocol.ClassCommandNotFound ||
		pe.Desc != "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state" {
		t.Errorf("freeze while frozen = %v", err)
	}
	if !env.State.Frozen() || sysLog(t, log) != nil {
		t.Error("a refused freeze changed the state or ran the hook")
	}
}

// A thaw that cannot read the mount table fails and, like the reference, stays frozen.
func TestFsfreezeThawWithoutMountTable(t *testing.T) {
	env := sysEnv(t, t.TempDir())
	if err := env.State.SetFrozen(true); err != nil {
		t.Fatal(err)
	}
	n, err := fsfreezeThaw(env)
	sysWantError(t, err, "failed to open mtab file: '/proc/self/mounts'")
	if n != 0 || !env.State.Frozen() {
		t.Errorf("thaw = %d, frozen %v; want 0, still frozen", n, env.State.Frozen())
	}
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
