package commands

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
	"github.com/qgakit/qgakit/agent/protocol"
)

// The fsfreeze ioctls (linux/fs.h). x/sys does not define them; the values are the generic
// _IOWR('X', 119/120, int) encoding of x86, arm64 and riscv.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// maxThawsPerFilesystem bounds the FITHAW loop. Each success undoes one nested freeze, so the
// loop ends by itself; the bound only protects against a filesystem that never says no.
const maxThawsPerFilesystem = 1 << 16

func init() {
	groups = append(groups, func(d *dispatch.Dispatcher, env *Env) {
		d.Register("guest-fsfreeze-status", func(ctx context.Context, args dispatch.Args) (any, error) {
			return fsfreezeStatus(env), nil
		})
		d.Register("guest-fsfreeze-freeze", func(ctx context.Context, args dispatch.Args) (any, error) {
			return fsfreezeFreeze(env)
		})
		d.Register("guest-fsfreeze-thaw", func(ctx context.Context, args dispatch.Args) (any, error) {
			return fsfreezeThaw(env)
		})
	})
}

// fsfreezeStatus is the agent's own view, not the kernel's, as in the reference.
func fsfreezeStatus(env *Env) string {
	if env.State != nil && env.State.Frozen() {
		return "frozen"
	}
	return "thawed"
}

// fsfreezeFreeze runs the freeze hook, then freezes every local filesystem in reverse mount
// order (children before their parents) and returns how many it froze. Any failure thaws
// everything before the error is returned, so no path leaves a filesystem frozen.
func fsfreezeFreeze(env *Env) (int64, error) {
	if env.State.Frozen() {
		// The dispatcher refuses the command while frozen (it is not on the allowlist) with
		// this reply, the reference's. Checked here too because a second freeze would meet
		// EBUSY everywhere, count 0 and leave the frozen state with everything still frozen.
		return 0, &protocol.Error{
			Class: protocol.ClassCommandNotFound,
			Desc:  "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state",
		}
	}
	if err := runFsfreezeHook(env, "freeze"); err != nil {
		return 0, err
	}
	mounts, err := fsMountList(env)
	if err != nil {
		return 0, err
	}
	// Enter the frozen state before the first FIFREEZE: from here on the agent must not write
	// to a filesystem, and an agent restarted in the middle must know it was frozen. Like the
	// reference, a state file that cannot be written does not stop the freeze the host asked
	// for; the in-memory state still disables what must not run.
	_ = env.State.SetFrozen(true)

	count, freezeErr := freezeMounts(env, mounts)
	if freezeErr != nil {
		// The reference's error path: thaw everything (which also leaves the frozen state and
		// runs the thaw hook) and report the freeze error, not the thaw's.
		_, _ = fsfreezeThaw(env)
		return 0, freezeErr
	}
	if count == 0 {
		// Nothing is frozen, so nothing must stay disabled; no thaw hook, as in the reference.
		_ = env.State.SetFrozen(false)
	}
	return count, nil
}

// freezeMounts issues FIFREEZE in reverse mount order. EOPNOTSUPP (a filesystem without
// freeze support) and EBUSY (already frozen through another mount) are not errors and are
// not counted.
func freezeMounts(env *Env, mounts []fsMount) (int64, error) {
	var count int64
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		fd, err := unix.Open(hostPath(env, m.Dir), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return count, protocol.Errorf("failed to open %s: %s", m.Dir, errtext.Strerror(err))
		}
		err = ioctlNoArg(fd, ioctlFIFREEZE)
		unix.Close(fd)
		switch {
		case err == nil:
			count++
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EBUSY):
		default:
			return count, protocol.Errorf("failed to freeze %s: %s", m.Dir, errtext.Strerror(err))
		}
	}
	return count, nil
}

// fsfreezeThaw thaws every local filesystem in mount order, repeating FITHAW until it fails
// so that nested freezes (by other tools too) are undone, and counts each filesystem that
// thawed at least once. It then leaves the frozen state and runs the thaw hook, even when
// nothing was frozen; a hook failure is the command's error.
func fsfreezeThaw(env *Env) (int64, error) {
	mounts, err := fsMountList(env)
	if err != nil {
		return 0, err
	}
	var count int64
	for _, m := range mounts {
		fd, err := unix.Open(hostPath(env, m.Dir), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		thawed := false
		for range maxThawsPerFilesystem {
			if ioctlNoArg(fd, ioctlFITHAW) != nil {
				break
			}
			thawed = true
		}
		unix.Close(fd)
		if thawed {
			count++
		}
	}
	_ = env.State.SetFrozen(false)
	if err := runFsfreezeHook(env, "thaw"); err != nil {
		return 0, err
	}
	return count, nil
}

// Cleanup thaws the guest's filesystems if the agent is in the frozen state; the server
// calls it on exit so that an agent that stops never leaves the guest frozen.
func Cleanup(env *Env) error {
	if env == nil || env.State == nil || !env.State.Frozen() {
		return nil
	}
	if _, err := fsfreezeThaw(env); err != nil {
		return fmt.Errorf("failed to clean up frozen filesystems: %w", err)
	}
	return nil
}

// runFsfreezeHook runs the -F hook with "freeze" or "thaw", with 7.2's checks and texts.
func runFsfreezeHook(env *Env, arg string) error {
	hook := env.FsfreezeHook
	if hook == "" {
		return nil
	}
	if err := unix.Access(hook, unix.X_OK); err != nil {
		return protocol.Errorf("can't access fsfreeze hook '%s': %s", hook, errtext.Strerror(err))
	}
	st, err := runChild(hook, []string{hook, arg})
	if err != nil {
		return err
	}
	if st.signaled {
		return protocol.Errorf("fsfreeze hook has terminated abnormally")
	}
	if st.code != 0 {
		return protocol.Errorf("fsfreeze hook has failed with status %d", st.code)
	}
	return nil
}

// ioctlNoArg issues an ioctl whose argument the kernel ignores.
func ioctlNoArg(fd int, req uintptr) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
