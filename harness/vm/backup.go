package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qgakit/qgakit/harness/qmp"
)

// This file gives specs the host's view of a running guest's disks: a point-in-time copy of a
// disk taken by QEMU itself (the oracle for guest-fsfreeze: only a frozen filesystem gives a
// consistent copy), and disks hot-added to a running guest (to let the guest's own kernel read
// such a copy, the only way to replay an xfs log without a loop device on the host).

// WithHotplugPorts adds n PCIe root ports that disks can be hot-added to (HotAddDisk), named
// HotplugPort(0) to HotplugPort(n-1). q35's root bus does not accept hot-plugged devices, so a
// port must exist from the start.
func WithHotplugPorts(n int) Option {
	return func(c *config) {
		for i := range n {
			// Every root port needs its own chassis/slot pair; numbers above the machine's own
			// devices keep clear of anything else on the command line.
			c.extra = append(c.extra, "-device",
				fmt.Sprintf("pcie-root-port,id=%s,chassis=%d,slot=%d", HotplugPort(i), 100+i, 100+i))
		}
	}
}

// HotplugPort is the id of the i-th root port WithHotplugPorts adds.
func HotplugPort(i int) string { return fmt.Sprintf("hotplug%d", i) }

// NodeSize is the virtual size in bytes of the block node with this node name, as QEMU sees it.
func (v *VM) NodeSize(ctx context.Context, node string) (int64, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
		} `json:"image"`
	}
	if err := v.QMP().Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return 0, fmt.Errorf("vm: size of node %s: %w", node, err)
	}
	for _, n := range nodes {
		if n.NodeName == node {
			return n.Image.VirtualSize, nil
		}
	}
	return 0, fmt.Errorf("vm: size of node %s: no such block node", node)
}

// Backup writes target, a raw image on the host holding the disk of block node node as it was
// when the copy started, with QMP blockdev-backup (sync=full): QEMU copies the disk while the
// guest keeps running, and copies a block aside before the guest overwrites it, so the copy is
// exactly the disk at the job's start, whatever the guest writes afterwards. That is what a
// backup tool gets, and what the guest's filesystem must be consistent in while it is frozen.
//
// The target node is attached only for the copy and removed afterwards, so the file can be read
// on the host or attached again (HotAddDisk). ctx bounds the copy; a job still running when it
// ends is cancelled.
func (v *VM) Backup(ctx context.Context, node, target string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("vm: backup of %s to %s: %w", node, target, err)
		}
	}()
	size, err := v.NodeSize(ctx, node)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(target)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(size) // sparse: only what the job writes takes space
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}

	m := v.QMP()
	tnode, job := "backup-target-"+node, "backup-"+node
	add := map[string]any{
		"driver": "raw", "node-name": tnode,
		"file": map[string]any{"driver": "file", "filename": abs},
	}
	if err := m.Execute(ctx, "blockdev-add", add, nil); err != nil {
		return fmt.Errorf("attach the target: %w", err)
	}
	defer func() {
		// Also when ctx has ended: a target left attached keeps QEMU's lock on the file.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := m.Execute(dctx, "blockdev-del", map[string]any{"node-name": tnode}, nil); derr != nil && err == nil {
			err = fmt.Errorf("detach the target: %w", derr)
		}
	}()

	mark := m.Mark()
	backup := map[string]any{"job-id": job, "device": node, "target": tnode, "sync": "full"}
	if err := m.Execute(ctx, "blockdev-backup", backup, nil); err != nil {
		return err
	}
	ev, err := m.WaitEventAfter(ctx, mark, "", func(e qmp.Event) bool {
		return (e.Name == "BLOCK_JOB_COMPLETED" || e.Name == "BLOCK_JOB_CANCELLED") && e.Str("device") == job
	})
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		mark := m.Mark()
		if m.Execute(cctx, "block-job-cancel", map[string]any{"device": job, "force": true}, nil) == nil {
			// The target can only be detached once the job has let go of it.
			_, _ = m.WaitEventAfter(cctx, mark, "", func(e qmp.Event) bool {
				return strings.HasPrefix(e.Name, "BLOCK_JOB_") && e.Str("device") == job
			})
		}
		return fmt.Errorf("wait for the job: %w", err)
	}
	if ev.Name == "BLOCK_JOB_CANCELLED" {
		return errors.New("the job was cancelled")
	}
	if msg := ev.Str("error"); msg != "" {
		return fmt.Errorf("the job failed: %s", msg)
	}
	return nil
}

// HotAddDisk attaches d to the running VM as a virtio-blk disk on port (see WithHotplugPorts):
// QMP blockdev-add of its file and format nodes, then device_add. d.Node must be set (the
// device's id is d.Node+"-dev"); d.Serial is the easy way for the guest to find the disk
// (/sys/block/vdX/serial). Overlay and Boot are not supported here. The guest sees the disk once
// its kernel has handled the hot-plug, which is up to the caller to wait for.
func (v *VM) HotAddDisk(ctx context.Context, port string, d Disk) error {
	if d.Node == "" {
		return errors.New("vm: hot-add disk: no node name")
	}
	if d.Overlay || d.Boot {
		return fmt.Errorf("vm: hot-add disk %s: Overlay and Boot apply to disks given at start only", d.Node)
	}
	abs, err := filepath.Abs(d.Path)
	if err != nil {
		return fmt.Errorf("vm: hot-add disk %s: %w", d.Node, err)
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("vm: hot-add disk %s: %w", d.Node, err)
	}
	format := d.Format
	if format == "" {
		format = "raw"
		if strings.HasSuffix(d.Path, ".qcow2") {
			format = "qcow2"
		}
	}
	file := map[string]any{"driver": "file", "filename": abs}
	node := map[string]any{"driver": format, "node-name": d.Node, "file": file}
	if d.ReadOnly {
		node["read-only"] = true
		file["read-only"] = true
	}
	m := v.QMP()
	if err := m.Execute(ctx, "blockdev-add", node, nil); err != nil {
		return fmt.Errorf("vm: hot-add disk %s: %w", d.Node, err)
	}
	dev := map[string]any{"driver": "virtio-blk-pci", "drive": d.Node, "id": d.Node + "-dev", "bus": port}
	if d.Serial != "" {
		dev["serial"] = d.Serial
	}
	if err := m.Execute(ctx, "device_add", dev, nil); err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = m.Execute(dctx, "blockdev-del", map[string]any{"node-name": d.Node}, nil)
		return fmt.Errorf("vm: hot-add disk %s: %w", d.Node, err)
	}
	return nil
}
