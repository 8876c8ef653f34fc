package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// flagValues returns every value given to flag, in order.
func flagValues(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

// checkFlag checks the values of every occurrence of flag in args.
func checkFlag(t *testing.T, args []string, flag string, want ...string) {
	t.Helper()
	if got := flagValues(args, flag); !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", flag, got, want)
	}
}

func build(t *testing.T, kvm bool, opts ...Option) []string {
	t.Helper()
	c := defaults()
	c.kvm = func() bool { return kvm }
	for _, o := range opts {
		o(c)
	}
	disks, err := c.resolveDisks(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	args, err := c.qemuArgs("/tmp/qgakit-test", disks)
	if err != nil {
		t.Fatal(err)
	}
	return args
}

func TestDefaultCommandLine(t *testing.T) {
	args := build(t, false)
	for _, want := range []string{"-nodefaults", "-no-user-config"} {
		if !slices.Contains(args, want) {
			t.Errorf("missing %s in %v", want, args)
		}
	}
	check := func(flag string, want ...string) { t.Helper(); checkFlag(t, args, flag, want...) }
	check("-machine", "q35,accel=tcg")
	check("-cpu", "max")
	check("-smp", "2")
	check("-m", "512")
	check("-display", "none")
	check("-global", "ICH9-LPC.disable_s3=0", "ICH9-LPC.disable_s4=0")
	check("-serial", "chardev:serial0", "chardev:console")
	check("-mon", "chardev=qmp,mode=control")
	check("-pidfile", "/tmp/qgakit-test/qemu.pid")
	devices := flagValues(args, "-device")
	if !slices.Contains(devices, "virtio-serial-pci,id=vser0") {
		t.Errorf("no virtio-serial controller vser0 in %q", devices)
	}
	for _, d := range devices {
		if strings.Contains(d, "virtserialport") || strings.Contains(d, "virtconsole") {
			t.Errorf("the agent port must be hot-plugged, not on the command line: %s", d)
		}
	}
	for _, flag := range []string{"-kernel", "-append", "-rtc", "-no-shutdown", "-netdev", "-blockdev"} {
		if slices.Contains(args, flag) {
			t.Errorf("%s without an option asking for it", flag)
		}
	}
	// The chardevs use the descriptors Start passes, in ExtraFiles order.
	chardevs := strings.Join(flagValues(args, "-chardev"), " ")
	for _, want := range []string{"id=qmp,fd=3,server=on,wait=off", "id=serial0,fd=4", "id=console,fd=5"} {
		if !strings.Contains(chardevs, want) {
			t.Errorf("chardevs %q lack %q", chardevs, want)
		}
	}
}

func TestKVMOnlyWhenUsable(t *testing.T) {
	if got := flagValues(build(t, true), "-machine"); !slices.Equal(got, []string{"q35,accel=kvm:tcg"}) {
		t.Errorf("usable KVM: -machine %q", got)
	}
	if got := flagValues(build(t, true, WithTCG()), "-machine"); !slices.Equal(got, []string{"q35,accel=tcg"}) {
		t.Errorf("WithTCG: -machine %q", got)
	}
}

func TestOptionsOnTheCommandLine(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "data,with comma.raw")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	args := build(t, false,
		WithName("spec-1"), WithMemory(1024), WithSMP(4),
		WithKernel("/k/vmlinuz", "/k/initrd", "console=ttyS0 quiet"), WithKernelArgs("qga.args=-v", "tiny.mnt=vdb"),
		WithNIC(NIC{MAC: "52:54:00:12:34:56"}), WithNIC(NIC{MAC: "52:54:00:ab:cd:ef", NetdevOptions: "restrict=on"}),
		WithDisk(Disk{Path: base, Overlay: true, Node: "root"}),
		WithDisk(Disk{Path: raw, Serial: "data1", ReadOnly: true}),
		WithRTCBase("2030-01-01"), WithNoShutdown(), WithoutS3(), WithCPU("qemu64"),
		WithQEMUArgs("-incoming", "defer"),
	)
	check := func(flag string, want ...string) { t.Helper(); checkFlag(t, args, flag, want...) }
	check("-name", "spec-1")
	check("-m", "1024")
	check("-smp", "4")
	check("-cpu", "qemu64")
	check("-kernel", "/k/vmlinuz")
	check("-initrd", "/k/initrd")
	check("-append", "console=ttyS0 quiet qga.args=-v tiny.mnt=vdb")
	check("-rtc", "base=2030-01-01")
	check("-global", "ICH9-LPC.disable_s3=1", "ICH9-LPC.disable_s4=0")
	check("-netdev", "user,id=net0", "user,id=net1,restrict=on")
	check("-incoming", "defer")
	if !slices.Contains(args, "-no-shutdown") {
		t.Error("no -no-shutdown")
	}
	devices := flagValues(args, "-device")
	for _, want := range []string{
		"virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
		"virtio-net-pci,netdev=net1,mac=52:54:00:ab:cd:ef",
		"virtio-blk-pci,drive=root,id=root-dev",
		"virtio-blk-pci,drive=disk1,id=disk1-dev,serial=data1",
	} {
		if !slices.Contains(devices, want) {
			t.Errorf("no -device %s in %q", want, devices)
		}
	}
	// Disk order is guest order: root (vda) before disk1 (vdb).
	if slices.Index(devices, "virtio-blk-pci,drive=root,id=root-dev") > slices.Index(devices, "virtio-blk-pci,drive=disk1,id=disk1-dev,serial=data1") {
		t.Error("disks out of order")
	}
	if args[len(args)-2] != "-incoming" {
		t.Error("raw QEMU args must come last")
	}
	blockdevs := flagValues(args, "-blockdev")
	if len(blockdevs) != 2 {
		t.Fatalf("blockdevs %q", blockdevs)
	}
	var root, data struct {
		Driver   string `json:"driver"`
		Node     string `json:"node-name"`
		Discard  string `json:"discard"`
		ReadOnly bool   `json:"read-only"`
		File     struct {
			Filename string `json:"filename"`
			Discard  string `json:"discard"`
		} `json:"file"`
	}
	if err := json.Unmarshal([]byte(blockdevs[0]), &root); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(blockdevs[1]), &data); err != nil {
		t.Fatal(err)
	}
	if root.Driver != "qcow2" || root.Node != "root" || root.Discard != "unmap" || root.File.Discard != "unmap" ||
		filepath.Base(root.File.Filename) != "root.qcow2" || root.ReadOnly {
		t.Errorf("overlay blockdev = %+v", root)
	}
	if data.Driver != "raw" || data.File.Filename != raw || !data.ReadOnly {
		t.Errorf("raw blockdev = %+v", data)
	}
	// The overlay really is a qcow2 over the base, and the base is untouched.
	out, err := exec.Command("qemu-img", "info", "--output=json", root.File.Filename).Output()
	if err != nil {
		t.Skipf("qemu-img: %v", err)
	}
	var info struct {
		Format  string `json:"format"`
		Backing string `json:"full-backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if info.Format != "qcow2" || info.Backing != base {
		t.Errorf("overlay: %s", out)
	}
	if b, _ := os.ReadFile(base); !bytes.Equal(b, make([]byte, 1<<20)) {
		t.Error("base changed")
	}
}

func TestCommandLineErrors(t *testing.T) {
	c := defaults()
	WithKernelArgs("quiet")(c)
	if _, err := c.qemuArgs("/tmp/x", nil); err == nil {
		t.Error("kernel arguments without a kernel accepted")
	}
	c = defaults()
	WithDisk(Disk{Path: "/nonexistent/disk.img"})(c)
	if _, err := c.resolveDisks(t.Context(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "disk0") {
		t.Errorf("missing disk: %v", err)
	}
	c = defaults()
	f := filepath.Join(t.TempDir(), "d.raw")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	WithDisk(Disk{Path: f, Node: "x"})(c)
	WithDisk(Disk{Path: f, Node: "x"})(c)
	if _, err := c.resolveDisks(t.Context(), t.TempDir()); err == nil {
		t.Error("duplicate node names accepted")
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"plain-arg_1.2/x=y:z,w": "plain-arg_1.2/x=y:z,w",
		"":                      "''",
		"two words":             "'two words'",
		"it's":                  `'it'\''s'`,
		`{"a":1}`:               `'{"a":1}'`,
		"$HOME;rm":              "'$HOME;rm'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
		// And a real shell gives the string back.
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+shellQuote(in)).Output()
		if err != nil || string(out) != in {
			t.Errorf("sh read %s as %q (%v)", shellQuote(in), out, err)
		}
	}
}

// TestKVMUsableAgreesWithQEMU starts a VM with the accelerator KVMUsable chose and asks QEMU
// what it runs on: a VM that KVMUsable sent to KVM must be running on KVM (not aborted), and
// the kernel's own verdict on /dev/kvm is logged for comparison.
func TestKVMUsableAgreesWithQEMU(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no QEMU")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := Start(ctx, WithLog(io.Discard), WithTempRoot(t.TempDir()), WithMemory(128))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	if err := v.QMP().Execute(ctx, "query-kvm", nil, &kvm); err != nil {
		t.Fatal(err)
	}
	if kvm.Enabled != KVMUsable() {
		t.Errorf("KVMUsable() = %v, but the VM runs with KVM enabled = %v", KVMUsable(), kvm.Enabled)
	}
	if st, err := v.QMP().Status(ctx); err != nil || st != "running" {
		t.Errorf("VM status %q, %v", st, err)
	}
	t.Logf("KVM usable: %v (KVM_CREATE_VM works: %v)", KVMUsable(), kernelCreatesVM())
}
