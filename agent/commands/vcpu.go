package commands

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
	"github.com/qgakit/qgakit/agent/protocol"
)

// sysCPUDir is where the kernel lists logical processors.
const sysCPUDir = "/sys/devices/system/cpu"

// logicalProcessor is GuestLogicalProcessor; can-offline is always filled in on output.
type logicalProcessor struct {
	LogicalID  int64 `json:"logical-id"`
	Online     bool  `json:"online"`
	CanOffline bool  `json:"can-offline"`
}

func init() {
	groups = append(groups, func(d *dispatch.Dispatcher, env *Env) {
		d.Register("guest-get-vcpus", func(ctx context.Context, args dispatch.Args) (any, error) {
			return guestGetVCPUs(env)
		})
		d.Register("guest-set-vcpus", func(ctx context.Context, args dispatch.Args) (any, error) {
			return guestSetVCPUs(env, args)
		})
	})
}

// guestGetVCPUs lists every cpuN entry in directory order (the reference does not sort):
// without an "online" file a processor is online and cannot be offlined (cpu0, usually).
func guestGetVCPUs(env *Env) ([]logicalProcessor, error) {
	dir, err := os.Open(hostPath(env, sysCPUDir))
	if err != nil {
		return nil, protocol.Errorf("failed to list entries: %s: %s", sysCPUDir, errtext.Strerror(err))
	}
	// Like g_dir_read_name, a read error ends the listing without failing it.
	names, _ := dir.Readdirnames(-1)
	dir.Close()

	vcpus := []logicalProcessor{}
	for _, name := range names {
		id, ok := parseCPUName(name)
		if !ok {
			continue
		}
		v := logicalProcessor{LogicalID: id}
		if err := readVCPU(env, &v); err != nil {
			return nil, err
		}
		vcpus = append(vcpus, v)
	}
	return vcpus, nil
}

// parseCPUName is sscanf(name, "cpu%ld"): "cpu" followed by an optionally signed number,
// with anything after the digits ignored ("cpufreq" and "cpuidle" have no number).
func parseCPUName(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, "cpu")
	if !ok {
		return 0, false
	}
	rest = strings.TrimLeft(rest, " \t\n\v\f\r")
	end := 0
	if end < len(rest) && (rest[end] == '+' || rest[end] == '-') {
		end++
	}
	digits := end
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	if end == digits {
		return 0, false
	}
	id, err := strconv.ParseInt(rest[:end], 10, 64)
	if err != nil {
		return 0, false
	}
	return id, true
}

// vcpuDir is the reference's directory path, trailing slash included: its error texts show
// it, e.g. `pread("/sys/devices/system/cpu/cpu1//online")`.
func vcpuDir(id int64) string { return fmt.Sprintf("%s/cpu%d/", sysCPUDir, id) }

// readVCPU fills in online and can-offline from sysfs.
func readVCPU(env *Env, v *logicalProcessor) error {
	dirpath := vcpuDir(v.LogicalID)
	fd, err := openVCPUOnline(env, dirpath, unix.O_RDONLY)
	if errors.Is(err, unix.ENOENT) {
		v.Online, v.CanOffline = true, false
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	status, err := preadOnline(fd, dirpath)
	if err != nil {
		return err
	}
	v.Online, v.CanOffline = status != '0', true
	return nil
}

// writeVCPU brings a processor to the requested state, writing only when it differs.
func writeVCPU(env *Env, id int64, online bool) error {
	dirpath := vcpuDir(id)
	fd, err := openVCPUOnline(env, dirpath, unix.O_RDWR)
	if errors.Is(err, unix.ENOENT) {
		if !online {
			return protocol.Errorf("logical processor #%d can't be offlined", id)
		}
		return nil // always online: re-onlining succeeds
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	status, err := preadOnline(fd, dirpath)
	if err != nil {
		return err
	}
	if online == (status != '0') {
		return nil
	}
	want := []byte{'0'}
	if online {
		want[0] = '1'
	}
	if _, err := unix.Pwrite(fd, want, 0); err != nil {
		return protocol.Errorf("pwrite(\"%s/online\"): %s", dirpath, errtext.Strerror(err))
	}
	return nil
}

// openVCPUOnline opens the processor's directory, then "online" in it, as the reference does.
// A missing "online" file comes back as a bare ENOENT for the caller to interpret; every
// other failure is the command's error.
func openVCPUOnline(env *Env, dirpath string, mode int) (int, error) {
	dirfd, err := unix.Open(hostPath(env, dirpath), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, protocol.Errorf("open(\"%s\"): %s", dirpath, errtext.Strerror(err))
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, "online", mode|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return -1, unix.ENOENT
	}
	if err != nil {
		return -1, protocol.Errorf("open(\"%s/online\"): %s", dirpath, errtext.Strerror(err))
	}
	return fd, nil
}

func preadOnline(fd int, dirpath string) (byte, error) {
	var b [1]byte
	n, err := unix.Pread(fd, b[:], 0)
	if err != nil {
		return 0, protocol.Errorf("pread(\"%s/online\"): %s", dirpath, errtext.Strerror(err))
	}
	if n == 0 {
		return 0, protocol.Errorf("pread(\"%s/online\"): unexpected EOF", dirpath)
	}
	return b[0], nil
}

// guestSetVCPUs applies the requested states in order and stops at the first failure. It
// returns how many were processed; the failure is the command's error only when it was the
// first processor (otherwise the count tells the host where it stopped).
func guestSetVCPUs(env *Env, args dispatch.Args) (int64, error) {
	list, _ := args["vcpus"].([]any)
	var processed int64
	for _, item := range list {
		v, ok := asArgs(item)
		if !ok {
			return processed, protocol.Errorf("Invalid parameter type for 'vcpus[%d]', expected: object", processed)
		}
		id, _ := v["logical-id"].(int64)
		online, _ := v["online"].(bool)
		if err := writeVCPU(env, id, online); err != nil {
			if processed == 0 {
				return 0, err
			}
			break
		}
		processed++
	}
	return processed, nil
}

// asArgs accepts a struct argument as the dispatcher builds it (Args) or as a decoded JSON
// object, so handlers can also be called with hand-built arguments.
func asArgs(v any) (dispatch.Args, bool) {
	switch m := v.(type) {
	case dispatch.Args:
		return m, true
	case map[string]any:
		return dispatch.Args(m), true
	}
	return nil, false
}
