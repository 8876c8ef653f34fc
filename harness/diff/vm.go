package diff

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/qmp"
	"github.com/qgakit/qgakit/harness/vm"
)

// The second agent's channel. The tiny image's supervisor runs /opt/qga/agent-b on the port
// named by the kernel argument qga.b= (images/tiny/rootfs/lib/tiny/supervisor).
const (
	// PortB is the virtio-serial port name of agent B.
	PortB     = "org.qemu.guest_agent.1"
	agentBBin = "/opt/qga/agent-b"
	chardevB  = "qgab"
	deviceB   = "qgab-port"
)

// Guest scratch directories, one per agent, made through the console before the run.
const (
	guestTmpA = "/tmp/qgadiff/a"
	guestTmpB = "/tmp/qgadiff/b"
)

// VMPair is one tiny VM running both agents, A on org.qemu.guest_agent.0 (attached the way
// the specs attach it) and B on org.qemu.guest_agent.1.
type VMPair struct {
	VM   *vm.VM
	A, B *Target

	tmp string
}

// StartVM builds (or takes from the cache) the tiny image, injects both agents, boots the VM
// and connects to both. log gets the VM's progress (nil: discarded).
func StartVM(ctx context.Context, aBin, bBin string, log io.Writer) (*VMPair, error) {
	if log == nil {
		log = io.Discard
	}
	t, err := image.BuildTiny(ctx, log)
	if err != nil {
		return nil, fmt.Errorf("diff vm: %w", err)
	}
	tmp, err := os.MkdirTemp("", "qgadiff-vm-")
	if err != nil {
		return nil, fmt.Errorf("diff vm: %w", err)
	}
	p := &VMPair{tmp: tmp}
	initrd, err := injectBoth(ctx, t, aBin, bBin, tmp)
	if err != nil {
		p.Close()
		return nil, err
	}
	// A scratch ext4 disk on /mnt/vda gives fsfreeze and fstrim a block file system to work
	// on; the rest of the guest is tmpfs.
	disk := filepath.Join(tmp, "scratch.qcow2")
	if err := image.CreateExt4Disk(ctx, disk, image.DiskSpec{Label: "qgadiff"}); err != nil {
		p.Close()
		return nil, fmt.Errorf("diff vm: %w", err)
	}
	cmdline := t.Cmdline(image.TinyOptions{Mounts: []string{"vda"}, Extra: []string{"qga.b=" + PortB}})
	v, err := vm.Start(ctx, vm.WithName("qgadiff"), vm.WithLog(log), vm.WithKernel(t.Kernel, initrd, cmdline),
		vm.WithDisk(vm.Disk{Path: disk, Node: "scratch"}))
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("diff vm: %w", err)
	}
	p.VM = v
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := v.WaitSerial(bctx, "TINY: READY"); err != nil {
		p.Close()
		return nil, fmt.Errorf("diff vm: the guest did not boot: %w", err)
	}
	ca, err := v.AttachAgent(bctx)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("diff vm: agent A: %w", err)
	}
	p.A = &Target{Name: "A", Bin: aBin, Client: ca, Tmp: guestTmpA}
	cb, err := attachB(bctx, v)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("diff vm: agent B: %w", err)
	}
	p.B = &Target{Name: "B", Bin: bBin, Client: cb, Tmp: guestTmpB}
	if _, err := v.Console().RunOK(bctx, "mkdir -p "+guestTmpA+" "+guestTmpB); err != nil {
		p.Close()
		return nil, fmt.Errorf("diff vm: make the scratch directories: %w", err)
	}
	return p, nil
}

// injectBoth writes an initramfs holding A at image.AgentPath and B at /opt/qga/agent-b, each
// with its shared libraries. InjectAgentWith collects the libraries of its main binary only,
// so B is injected first as the main agent (bringing its libraries), and that result is the
// base for injecting A, with B's binary copied again to agent-b; A replaces B at AgentPath
// because the kernel unpacks later archives over earlier ones.
func injectBoth(ctx context.Context, t *image.Tiny, aBin, bBin, dir string) (string, error) {
	withB := filepath.Join(dir, "initrd-b")
	if err := t.InjectAgent(ctx, bBin, withB); err != nil {
		return "", fmt.Errorf("diff vm: inject B: %w", err)
	}
	data, err := os.ReadFile(bBin)
	if err != nil {
		return "", fmt.Errorf("diff vm: inject B: %w", err)
	}
	base := *t
	base.Initramfs = withB
	out := filepath.Join(dir, "initrd-ab")
	if err := base.InjectAgentWith(ctx, aBin, out, image.ExtraFile{Path: agentBBin, Mode: 0o755, Data: data}); err != nil {
		return "", fmt.Errorf("diff vm: inject A: %w", err)
	}
	return out, nil
}

// attachB hot-plugs B's port the way vm.AttachAgent does A's (vm knows one agent port only).
func attachB(ctx context.Context, v *vm.VM) (*qga.Client, error) {
	path := filepath.Join(v.Dir(), "qga-b.sock")
	chardev := map[string]any{
		"id": chardevB,
		"backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": path}},
			"server": true,
			"wait":   false,
		}},
	}
	m := v.QMP()
	if err := m.Execute(ctx, "chardev-add", chardev, nil); err != nil {
		return nil, fmt.Errorf("chardev-add: %w", err)
	}
	client, err := qga.Dial(ctx, path)
	if err != nil {
		return nil, err
	}
	mark := m.Mark()
	port := map[string]any{
		"driver": "virtserialport", "bus": "vser0.0", "chardev": chardevB,
		"name": PortB, "id": deviceB,
	}
	if err := m.Execute(ctx, "device_add", port, nil); err != nil {
		client.Close()
		return nil, fmt.Errorf("device_add: %w", err)
	}
	if _, err := m.WaitEventAfter(ctx, mark, "VSERPORT_CHANGE", func(e qmp.Event) bool {
		return e.Str("id") == deviceB && e.Bool("open")
	}); err != nil {
		client.Close()
		return nil, fmt.Errorf("the guest never opened %s (does the image's supervisor know qga.b=?): %w", PortB, err)
	}
	if err := client.SyncUntil(ctx, 2*time.Second); err != nil {
		client.Close()
		return nil, fmt.Errorf("the port is open but agent B does not answer: %w", err)
	}
	return client, nil
}

// Artifacts writes the VM's artifacts (serial log, QMP, console, A's transcript) and B's
// transcript to dir.
func (p *VMPair) Artifacts(dir string) error {
	if p.VM == nil {
		return nil
	}
	if err := p.VM.Artifacts(dir); err != nil {
		return err
	}
	if p.B == nil {
		return nil
	}
	f, err := os.Create(filepath.Join(dir, "qga-b.log"))
	if err != nil {
		return fmt.Errorf("diff vm: artifacts: %w", err)
	}
	if _, err := p.B.Client.Transcript().WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("diff vm: artifacts: %w", err)
	}
	return f.Close()
}

// Close stops the VM and removes the injected initramfs.
func (p *VMPair) Close() error {
	var err error
	if p.B != nil {
		p.B.Client.Close()
	}
	if p.VM != nil {
		err = p.VM.Close()
	}
	os.RemoveAll(p.tmp)
	return err
}
