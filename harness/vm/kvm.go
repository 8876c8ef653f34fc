package vm

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ioctls of /dev/kvm (linux/kvm.h): _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12
)

var kvmOnce = sync.OnceValue(func() bool { return kernelCreatesVM() && qemuRunsVCPU() })

// KVMUsable reports whether KVM can run this harness's guests. The device node existing (or
// even opening) is not enough, and neither is KVM_CREATE_VM succeeding: on some nested hosts
// the kernel creates the VM but QEMU aborts when it loads -cpu max's MSRs into the vCPU
// ("failed to set MSR 0x10a"). So after the ioctls, a guestless QEMU with the harness's machine
// and CPU must start its vCPUs and report "running". The answer is computed once per process.
func KVMUsable() bool { return kvmOnce() }

func kernelCreatesVM() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	fd := int(f.Fd())
	if v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion); err != nil || v != kvmAPIVersion {
		return false
	}
	vm, err := unix.IoctlRetInt(fd, kvmCreateVM)
	if err != nil {
		return false
	}
	unix.Close(vm)
	return true
}

func qemuRunsVCPU() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-machine", "q35,accel=kvm", "-cpu", "max",
		"-m", "64", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}{"execute":"cont"}` +
		`{"execute":"query-status"}{"execute":"quit"}`)
	out, err := cmd.Output()
	return err == nil && strings.Contains(string(out), `"running": true`)
}
