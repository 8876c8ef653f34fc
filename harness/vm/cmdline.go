package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// File descriptors QEMU inherits (exec.Cmd.ExtraFiles starts at 3).
const (
	fdQMP     = 3 // listening socket, QEMU accepts the harness's connection
	fdSerial0 = 4 // connected socketpair end: ttyS0
	fdConsole = 5 // connected socketpair end: ttyS1
)

// blockDisk is a Disk resolved to what QEMU opens.
type blockDisk struct {
	Disk
	node, file, format string
}

// resolveDisks names the nodes and creates the overlays in dir.
func (c *config) resolveDisks(ctx context.Context, dir string) ([]blockDisk, error) {
	out := make([]blockDisk, 0, len(c.disks))
	seen := map[string]bool{}
	for i, d := range c.disks {
		bd := blockDisk{Disk: d, node: d.Node, file: d.Path, format: d.Format}
		if bd.node == "" {
			bd.node = "disk" + strconv.Itoa(i)
		}
		if seen[bd.node] {
			return nil, fmt.Errorf("disk %d: node name %q used twice", i, bd.node)
		}
		seen[bd.node] = true
		if bd.format == "" {
			bd.format = "raw"
			if strings.HasSuffix(d.Path, ".qcow2") {
				bd.format = "qcow2"
			}
		}
		abs, err := filepath.Abs(d.Path)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", bd.node, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("disk %s: %w", bd.node, err)
		}
		bd.file = abs
		if d.Overlay {
			overlay := filepath.Join(dir, bd.node+".qcow2")
			cmd := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2",
				"-F", bd.format, "-b", abs, overlay)
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("disk %s: create overlay over %s: %w: %s", bd.node, abs, err, out)
			}
			bd.file, bd.format = overlay, "qcow2"
		}
		out = append(out, bd)
	}
	return out, nil
}

// qemuArgs is the whole command line after the binary. dir holds the VM's files.
func (c *config) qemuArgs(dir string, disks []blockDisk) ([]string, error) {
	if len(c.append) > 0 && c.kernel == "" {
		return nil, errors.New("kernel arguments given without WithKernel")
	}
	accel := "tcg"
	switch {
	case c.accel != "":
		accel = c.accel
	case c.kvm != nil && c.kvm():
		// KVM works here; let QEMU still fall back rather than fail if that changes.
		accel = "kvm:tcg"
	}
	cpu := c.cpu
	if cpu == "" {
		cpu = "max"
	}
	onOff := func(disabled bool) string {
		if disabled {
			return "1"
		}
		return "0"
	}
	a := []string{
		"-name", c.name,
		"-machine", "q35,accel=" + accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(c.smp),
		"-m", strconv.Itoa(c.memMiB),
		"-nodefaults", "-no-user-config", "-display", "none",
		// Explicit although 7.2 enables both by default: the power specs depend on them.
		"-global", "ICH9-LPC.disable_s3=" + onOff(c.noS3),
		"-global", "ICH9-LPC.disable_s4=" + onOff(c.noS4),
		"-pidfile", filepath.Join(dir, "qemu.pid"),
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", fdQMP),
		"-mon", "chardev=qmp,mode=control",
		"-chardev", fmt.Sprintf("socket,id=serial0,fd=%d", fdSerial0),
		"-serial", "chardev:serial0",
		"-chardev", fmt.Sprintf("socket,id=console,fd=%d", fdConsole),
		"-serial", "chardev:console",
		// The agent's port is hot-plugged on this controller (AttachAgent).
		"-device", "virtio-serial-pci,id=vser0",
		"-device", "virtio-rng-pci",
	}
	if c.kernel != "" {
		a = append(a, "-kernel", c.kernel)
		if c.initrd != "" {
			a = append(a, "-initrd", c.initrd)
		}
		if len(c.append) > 0 {
			a = append(a, "-append", strings.Join(c.append, " "))
		}
	}
	if c.rtcBase != "" {
		a = append(a, "-rtc", "base="+c.rtcBase)
	}
	if c.noShut {
		a = append(a, "-no-shutdown")
	}
	for i, n := range c.nics {
		netdev := fmt.Sprintf("user,id=net%d", i)
		if n.NetdevOptions != "" {
			netdev += "," + n.NetdevOptions
		}
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		dev := fmt.Sprintf("%s,netdev=net%d", model, i)
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		a = append(a, "-netdev", netdev, "-device", dev)
	}
	for _, d := range disks {
		// JSON syntax, so that no path needs comma escaping.
		file := map[string]any{"driver": "file", "filename": d.file, "discard": "unmap"}
		node := map[string]any{"driver": d.format, "node-name": d.node, "discard": "unmap", "file": file}
		if d.ReadOnly {
			node["read-only"] = true
			file["read-only"] = true
		}
		b, err := json.Marshal(node)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.node, err)
		}
		dev := fmt.Sprintf("virtio-blk-pci,drive=%s,id=%s-dev", d.node, d.node)
		if d.Serial != "" {
			dev += ",serial=" + d.Serial
		}
		if d.Boot {
			dev += ",bootindex=1"
		}
		a = append(a, "-blockdev", string(b), "-device", dev)
	}
	return append(a, c.extra...), nil
}

// shellJoin renders a command line for a shell. To rerun it by hand, replace the fd= chardevs
// (see reproduceNote) with path sockets.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, s := range argv {
		q[i] = shellQuote(s)
	}
	return strings.Join(q, " ")
}

// shellQuote quotes s for a POSIX shell (busybox sh included) when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// reproduceNote heads the command line in the artifacts: the chardevs use descriptors the
// harness passed, which a pasted command line does not have.
const reproduceNote = `# QEMU inherited fd 3 (QMP, a listening unix socket), fd 4 (ttyS0) and fd 5 (ttyS1, the console).
# To rerun by hand, replace them, e.g.: -chardev socket,id=qmp,path=/tmp/qmp.sock,server=on,wait=off
#   -chardev file,id=serial0,path=/tmp/serial0.log -chardev socket,id=console,path=/tmp/con.sock,server=on,wait=off
`
