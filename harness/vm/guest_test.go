package vm

import (
	"reflect"
	"testing"

	"github.com/qgakit/qgakit/harness/image"
)

// The caller's options go between the machine and the profile's disks: its disks come first and
// its memory wins.
func TestGuestOptions(t *testing.T) {
	g := &image.Guest{Kernel: "/k", Initrd: "/i", Cmdline: "console=ttyS0", MemoryMiB: 1024, CPU: "qemu64",
		Disks: []image.GuestDisk{{Path: "/root.qcow2", Format: "qcow2", Overlay: true, Boot: true, Node: "root"},
			{Path: "/seed.iso", Format: "raw", ReadOnly: true, Node: "seed"}}}
	machine, disks := GuestOptions(g)
	opts := append(machine, WithDisk(Disk{Path: "/data.raw", Node: "data"}), WithMemory(2048))
	for _, d := range disks {
		opts = append(opts, WithDisk(d))
	}
	c := newConfig(opts)
	if c.kernel != "/k" || c.initrd != "/i" || c.cpu != "qemu64" || c.memMiB != 2048 {
		t.Errorf("machine: kernel %q initrd %q cpu %q memory %d", c.kernel, c.initrd, c.cpu, c.memMiB)
	}
	want := []Disk{{Path: "/data.raw", Node: "data"},
		{Path: "/root.qcow2", Format: "qcow2", Overlay: true, Boot: true, Node: "root"},
		{Path: "/seed.iso", Format: "raw", ReadOnly: true, Node: "seed"}}
	if !reflect.DeepEqual(c.disks, want) {
		t.Errorf("disks %+v, want %+v", c.disks, want)
	}
	if m, d := GuestOptions(&image.Guest{}); len(m) != 0 || len(d) != 0 {
		t.Errorf("an empty guest gives %d options and %d disks", len(m), len(d))
	}
}
