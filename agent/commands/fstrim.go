package commands

import (
	"context"
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
)

// ioctlFITRIM is _IOWR('X', 121, struct fstrim_range) (linux/fs.h), absent from x/sys.
const ioctlFITRIM = 0xC0185879

// fstrimRange is struct fstrim_range.
type fstrimRange struct {
	Start  uint64
	Len    uint64
	MinLen uint64
}

// fstrimResult is GuestFilesystemTrimResult: either trimmed and minimum, or error.
type fstrimResult struct {
	Path    string  `json:"path"`
	Trimmed *int64  `json:"trimmed,omitempty"`
	Minimum *int64  `json:"minimum,omitempty"`
	Error   *string `json:"error,omitempty"`
}

// fstrimResponse is GuestFilesystemTrimResponse.
type fstrimResponse struct {
	Paths []fstrimResult `json:"paths"`
}

func init() {
	groups = append(groups, func(d *dispatch.Dispatcher, env *Env) {
		d.Register("guest-fstrim", func(ctx context.Context, args dispatch.Args) (any, error) {
			return guestFstrim(env, args)
		})
	})
}

// guestFstrim issues FITRIM on every local filesystem and reports each one, in the
// reference's order (reverse mount order: it prepends to its list). Only a mount table that
// cannot be read fails the command; per-filesystem failures are the entries' errors.
func guestFstrim(env *Env, args dispatch.Args) (*fstrimResponse, error) {
	mounts, err := fsMountList(env)
	if err != nil {
		return nil, err
	}
	var minimum uint64
	if m, ok := args["minimum"].(int64); ok {
		// The reference assigns the int64 to the __u64 field: a negative value wraps.
		minimum = uint64(m)
	}
	resp := &fstrimResponse{Paths: make([]fstrimResult, 0, len(mounts))}
	for i := len(mounts) - 1; i >= 0; i-- {
		resp.Paths = append(resp.Paths, fstrimOne(env, mounts[i].Dir, minimum))
	}
	return resp, nil
}

func fstrimOne(env *Env, dir string, minimum uint64) fstrimResult {
	res := fstrimResult{Path: dir}
	fail := func(msg string) fstrimResult {
		res.Error = &msg
		return res
	}
	fd, err := unix.Open(hostPath(env, dir), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("failed to open: " + errtext.Strerror(err))
	}
	defer unix.Close(fd)
	r := fstrimRange{Start: 0, Len: ^uint64(0), MinLen: minimum}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlFITRIM, uintptr(unsafe.Pointer(&r)))
	if errno != 0 {
		if errors.Is(errno, unix.ENOTTY) || errors.Is(errno, unix.EOPNOTSUPP) {
			return fail("trim not supported")
		}
		return fail("failed to trim: " + errtext.Strerror(errno))
	}
	// The kernel writes back the bytes trimmed (len) and the minimum it used (minlen); the
	// schema's members are int, as the reference's.
	trimmed, used := int64(r.Len), int64(r.MinLen)
	res.Trimmed, res.Minimum = &trimmed, &used
	return res
}
