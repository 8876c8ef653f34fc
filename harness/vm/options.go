package vm

import (
	"io"
	"os"
)

// Option configures a VM.
type Option func(*config)

// NIC is a user-mode (slirp) network card: the guest sees 10.0.2.0/24 with the host at 10.0.2.2.
type NIC struct {
	// MAC is the card's fixed address, e.g. "52:54:00:12:34:56"; empty lets QEMU choose.
	MAC string
	// Model is the QEMU device; empty means virtio-net-pci.
	Model string
	// NetdevOptions are appended to "-netdev user,id=netN", e.g. "hostfwd=tcp::2222-:22".
	NetdevOptions string
}

// Disk is a virtio-blk disk. Disks appear in the guest in the order they were added: the first
// is vda.
type Disk struct {
	// Path is the image file. With Overlay it is the base the overlay is created over and stays
	// untouched.
	Path string
	// Format of Path: "qcow2" or "raw". Empty means qcow2 for a path ending in .qcow2 and raw
	// otherwise.
	Format string
	// Overlay attaches a fresh qcow2 overlay over Path, created in the VM's dir and removed with
	// it, instead of Path itself.
	Overlay bool
	// Node is the block node name (for QMP: blockdev-backup, query-block); empty means
	// "disk<N>", N counting from 0. The device's id is Node+"-dev".
	Node string
	// ReadOnly attaches the disk read-only.
	ReadOnly bool
	// Serial is the disk's serial number (/dev/disk/by-id/virtio-<serial>).
	Serial string
	// Boot makes the firmware boot from this disk (cloud images without -kernel).
	Boot bool
}

type config struct {
	qemu     string
	name     string
	memMiB   int
	smp      int
	kernel   string
	initrd   string
	append   []string
	nics     []NIC
	disks    []Disk
	rtcBase  string
	noShut   bool
	noS3     bool
	noS4     bool
	accel    string // "", "tcg" or "kvm"
	cpu      string
	extra    []string
	log      io.Writer
	tempRoot string
	kvm      func() bool
}

func defaults() *config {
	return &config{
		qemu:     "qemu-system-x86_64",
		name:     "qgakit",
		memMiB:   512,
		smp:      2,
		log:      os.Stderr,
		tempRoot: "/tmp",
		kvm:      KVMUsable,
	}
}

// WithName names the VM (QEMU's -name, log prefixes).
func WithName(name string) Option { return func(c *config) { c.name = name } }

// WithQEMU sets the QEMU binary (default qemu-system-x86_64 from PATH).
func WithQEMU(path string) Option { return func(c *config) { c.qemu = path } }

// WithMemory sets the guest memory in MiB (default 512).
func WithMemory(mib int) Option { return func(c *config) { c.memMiB = mib } }

// WithSMP sets the number of vCPUs (default 2).
func WithSMP(n int) Option { return func(c *config) { c.smp = n } }

// WithKernel boots a kernel directly: -kernel, -initrd (when not empty) and -append. This is how
// the tiny image boots: vm.WithKernel(t.Kernel, injectedInitrd, t.Cmdline(opts)).
func WithKernel(kernel, initrd, cmdline string) Option {
	return func(c *config) {
		c.kernel, c.initrd = kernel, initrd
		c.append = append([]string{cmdline}, c.append...)
	}
}

// WithKernelArgs appends kernel arguments after WithKernel's command line, in order.
func WithKernelArgs(args ...string) Option {
	return func(c *config) { c.append = append(c.append, args...) }
}

// WithNIC adds a user-mode NIC. The first one is the guest's eth0.
func WithNIC(n NIC) Option { return func(c *config) { c.nics = append(c.nics, n) } }

// WithDisk adds a virtio-blk disk.
func WithDisk(d Disk) Option { return func(c *config) { c.disks = append(c.disks, d) } }

// WithRTCBase sets -rtc base= ("utc", "localtime" or a date such as "2030-01-01T00:00:00").
func WithRTCBase(base string) Option { return func(c *config) { c.rtcBase = base } }

// WithNoShutdown makes a guest power-off stop the VM (status "shutdown") instead of ending QEMU.
func WithNoShutdown() Option { return func(c *config) { c.noShut = true } }

// WithoutS3 disables suspend-to-RAM in the firmware (ICH9-LPC.disable_s3=1).
func WithoutS3() Option { return func(c *config) { c.noS3 = true } }

// WithoutS4 disables suspend-to-disk in the firmware (ICH9-LPC.disable_s4=1).
func WithoutS4() Option { return func(c *config) { c.noS4 = true } }

// WithTCG forces TCG even where KVM works (timing-sensitive specs that want the CI's conditions).
func WithTCG() Option { return func(c *config) { c.accel = "tcg" } }

// WithCPU overrides -cpu (default max).
func WithCPU(model string) Option { return func(c *config) { c.cpu = model } }

// WithQEMUArgs appends raw QEMU arguments last (e.g. "-incoming", "defer").
func WithQEMUArgs(args ...string) Option {
	return func(c *config) { c.extra = append(c.extra, args...) }
}

// WithLog sends the QEMU command line, lifecycle notes and ttyS0's lines (timestamped) to w.
// The default is os.Stderr; specs pass GinkgoWriter.
func WithLog(w io.Writer) Option { return func(c *config) { c.log = w } }

// WithTempRoot sets where the VM's dir is made (default /tmp: the QMP and agent socket paths
// must stay below 108 bytes, which a long $TMPDIR can break).
func WithTempRoot(dir string) Option { return func(c *config) { c.tempRoot = dir } }
