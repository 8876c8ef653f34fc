package vm

import "github.com/qgakit/qgakit/harness/image"

// GuestOptions maps an image profile's guest (harness/image) onto this package: machine is its
// kernel, memory and CPU, and disks are the profile's own disks (a cloud image's root and seed,
// found by label in the guest). A caller puts its own options between the two, so that its
// data disks come first (vda, vdb) and a memory of its own overrides the profile's:
//
//	machine, disks := vm.GuestOptions(g)
//	opts := append(machine, mine...)
//	for _, d := range disks {
//		opts = append(opts, vm.WithDisk(d))
//	}
func GuestOptions(g *image.Guest) (machine []Option, disks []Disk) {
	if g.Kernel != "" {
		machine = append(machine, WithKernel(g.Kernel, g.Initrd, g.Cmdline))
	}
	if g.MemoryMiB > 0 {
		machine = append(machine, WithMemory(g.MemoryMiB))
	}
	if g.CPU != "" {
		machine = append(machine, WithCPU(g.CPU))
	}
	for _, d := range g.Disks {
		disks = append(disks, Disk{Path: d.Path, Format: d.Format, Overlay: d.Overlay,
			ReadOnly: d.ReadOnly, Boot: d.Boot, Node: d.Node})
	}
	return machine, disks
}
