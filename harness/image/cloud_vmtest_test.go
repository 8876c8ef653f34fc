//go:build vmtest

package image_test

// Boots of the cloud profiles through the public API, the way the suite will: Prepare, Guest,
// harness/vm. The debian-cloud build takes minutes the first time, so run these with a long
// timeout:
//
//	make agent && go test -tags vmtest -timeout 60m -run Cloud -v ./harness/image/
//
// AGENT= picks the injected agent (default: bin/qga of this checkout). CLOUD_IMAGE= boots
// another image the same way (url:<URL> with IMAGE_SHA256, or file:<path>).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

type tlog struct{ t testing.TB }

func (w tlog) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func cloudImage() string {
	if i := os.Getenv("CLOUD_IMAGE"); i != "" {
		return i
	}
	return image.ProfileDebianCloud
}

func testAgent(t *testing.T) string {
	t.Helper()
	a := os.Getenv("AGENT")
	if a == "" {
		a = filepath.Join("..", "..", "bin", "qga")
	}
	abs, err := filepath.Abs(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("agent %s: %v (run make agent, or set AGENT)", abs, err)
	}
	return abs
}

func prepareCloud(t *testing.T, ctx context.Context, agent string) *image.Prepared {
	t.Helper()
	c := image.ConfigFromEnv()
	c.Image, c.Agent, c.Dir, c.Progress = cloudImage(), agent, t.TempDir(), tlog{t}
	start := time.Now()
	p, err := image.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prepared %s in %.1fs: %+v", c.Image, time.Since(start).Seconds(), p)
	return p
}

// vmOptions maps a Guest onto harness/vm, after the spec's own disks.
func vmOptions(g *image.Guest, disks ...vm.Disk) []vm.Option {
	opts, own := vm.GuestOptions(g)
	for _, d := range disks {
		opts = append(opts, vm.WithDisk(d))
	}
	for _, d := range own {
		opts = append(opts, vm.WithDisk(d))
	}
	return opts
}

// boot starts a guest of p with the spec's disks first, as the suite will, and returns it once
// the agent answers, logging how long each stage took from the QEMU start.
func boot(t *testing.T, ctx context.Context, p *image.Prepared, o image.GuestOptions, disks ...vm.Disk) *vm.VM {
	t.Helper()
	g, err := p.Guest(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	opts := vmOptions(g, disks...)
	bctx, cancel := context.WithTimeout(ctx, g.BootTimeout)
	defer cancel()
	start := time.Now()
	v := vm.StartT(t, bctx, opts...)
	if _, err := v.WaitSerial(bctx, g.Ready); err != nil {
		t.Fatalf("no %q: %v", g.Ready, err)
	}
	ready := time.Since(start)
	if _, err := v.AttachAgent(bctx); err != nil {
		t.Fatalf("attach the agent: %v", err)
	}
	t.Logf("QEMU start to %s: %.1fs; to the agent answering: %.1fs", g.Ready, ready.Seconds(), time.Since(start).Seconds())
	return v
}

func TestCloudInjectedAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	agent := testAgent(t)
	p := prepareCloud(t, ctx, agent)

	data := filepath.Join(t.TempDir(), "data.qcow2")
	if err := image.CreateExt4Disk(ctx, data, image.DiskSpec{Label: "qgadata",
		Files: []image.DiskFile{{Path: "hello.txt", Data: []byte("from the host\n")}}}); err != nil {
		t.Fatal(err)
	}
	swap := filepath.Join(t.TempDir(), "swap.qcow2")
	if err := image.CreateSwapDisk(ctx, swap, image.DiskSpec{Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	v := boot(t, ctx, p, image.GuestOptions{Mounts: []string{"vda"}, Swap: "vdb", AgentArgs: []string{"-v"}},
		vm.Disk{Path: data, Overlay: true}, vm.Disk{Path: swap, Overlay: true})

	var info struct {
		Version string `json:"version"`
	}
	if err := v.Agent().Call(ctx, "guest-info", nil, &info); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent version %s", info.Version)

	con := v.Console()
	// The console is a root shell without echo: the output is exactly what the command printed.
	out, err := con.RunOK(ctx, "id -u; cat /mnt/vda/hello.txt; swapon --show=NAME --noheadings")
	if err != nil {
		t.Fatal(err)
	}
	if out != "0\nfrom the host\n/dev/vdb\n" {
		t.Errorf("console: %q, want root, the data disk's file and the swap disk", out)
	}
	sum, err := fileSum(p.Agent) // the copy Prepare made: bin/qga may be rebuilt meanwhile
	if err != nil {
		t.Fatal(err)
	}
	out, err = con.RunOK(ctx, "sha256sum "+p.AgentPath()+"; tr '\\0' ' ' < /proc/$(pidof -s agent)/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, sum+"  "+image.CloudAgentPath+"\n") ||
		!strings.Contains(out, image.CloudAgentPath+" -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -l /run/qga.log -v ") {
		t.Errorf("the agent running in the guest is not the injected one with its arguments:\n%s", out)
	}
	// Debian's own unit must not be running beside it.
	if out, _, _ := con.Run(ctx, "systemctl is-active qemu-guest-agent.service; pidof qemu-ga"); strings.Contains(out, "/") ||
		!strings.HasPrefix(out, "inactive") {
		t.Errorf("Debian's qemu-guest-agent runs too: %q", out)
	}

	// A killed agent is restarted, and both show on ttyS0.
	mark := v.SerialMark()
	if _, err := con.RunOK(ctx, "kill -9 $(pidof -s agent)"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitSerialAfter(ctx, mark, p.Marker(image.EventAgentExit(137))); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitSerialAfter(ctx, mark, p.Marker(image.EventAgentStart)); err != nil {
		t.Fatal(err)
	}
	if err := v.Agent().Sync(ctx); err != nil {
		t.Fatalf("the restarted agent does not answer: %v", err)
	}

	// guest-shutdown: the seed's hook reports the mode last, and QEMU exits.
	mark = v.SerialMark()
	if err := v.Agent().CallNoReply(ctx, "guest-shutdown", map[string]string{"mode": "powerdown"}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitSerialAfter(ctx, mark, p.Marker(image.EventShutdown("poweroff"))); err != nil {
		t.Fatal(err)
	}
	st, err := v.Wait(ctx)
	if err != nil || st.ExitCode() != 0 {
		t.Errorf("QEMU after the power-off: %v, %v", st, err)
	}
}

func TestCloudImageAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	p := prepareCloud(t, ctx, image.AgentFromImage)
	v := boot(t, ctx, p, image.GuestOptions{})
	var info struct {
		Version string `json:"version"`
	}
	if err := v.Agent().Call(ctx, "guest-info", nil, &info); err != nil {
		t.Fatal(err)
	}
	out, err := v.Console().RunOK(ctx, "readlink /proc/$(pidof -s qemu-ga)/exe; dpkg-query -W -f '${Version}' qemu-guest-agent")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 2 || lines[0] != image.ImageAgentPath {
		t.Fatalf("console: %q, want the image's %s running", out, image.ImageAgentPath)
	}
	// Debian's package 1:7.2+dfsg-7+deb12u18+b3 holds QEMU 7.2.x (its agent says 7.2.22): the
	// reported version starts with the package's upstream major.minor.
	_, upstream, _ := strings.Cut(lines[1], ":")
	upstream, _, _ = strings.Cut(upstream, "+")
	if upstream == "" || !strings.HasPrefix(info.Version, upstream+".") {
		t.Errorf("agent reports version %s, the image's package is %s", info.Version, lines[1])
	}
}

func fileSum(p string) (string, error) {
	out, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(out)
	return hex.EncodeToString(sum[:]), nil
}

// TestCloudTemplate boots the cloud guest once, saves it when it is ready, and restores it: the
// way a suite makes a cloud image affordable. The clone's agent (injected) answers on a port
// attached after the restore, and its console works.
func TestCloudTemplate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	p := prepareCloud(t, ctx, testAgent(t))
	g, err := p.Guest(ctx, image.GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tpl := vm.NewTemplate(filepath.Join(t.TempDir(), "tpl"), append(vmOptions(g), vm.WithLog(tlog{t}))...)
	start := time.Now()
	err = tpl.Save(ctx, func(ctx context.Context, v *vm.VM) error {
		bctx, cancel := context.WithTimeout(ctx, g.BootTimeout)
		defer cancel()
		if _, err := v.WaitSerial(bctx, g.Ready); err != nil {
			return err
		}
		return v.Console().WaitReady(bctx)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot and save: %.1fs, state %d MB", time.Since(start).Seconds(), tpl.StateBytes()>>20)
	for i := 0; i < 2; i++ {
		start = time.Now()
		v := tpl.RestoreT(t, ctx, vm.RestoreAgent())
		t.Logf("restore %d: agent answering and clock set after %.2fs", i, time.Since(start).Seconds())
		out, err := v.Console().RunOK(ctx, "pidof -s agent >/dev/null && echo running; cat /proc/sys/kernel/random/boot_id")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out, "running\n") {
			t.Errorf("clone %d: console %q, want the injected agent running", i, out)
		}
		if err := v.Agent().Call(ctx, "guest-ping", nil, nil); err != nil {
			t.Errorf("clone %d: guest-ping: %v", i, err)
		}
		v.Close()
	}
}

// TestCloudHibernate proves the seed's swap and the profile's resume= together: the agent
// hibernates the guest (QEMU exits on its own), and the next start with the same disks resumes
// it (a token in /run and the boot id survive).
func TestCloudHibernate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	p := prepareCloud(t, ctx, testAgent(t))
	if !p.DirectKernelBoot() {
		t.Skip("resume= needs a direct kernel boot")
	}
	dir := t.TempDir()
	swap := filepath.Join(dir, "swap.qcow2")
	if err := image.CreateSwapDisk(ctx, swap, image.DiskSpec{}); err != nil {
		t.Fatal(err)
	}
	g, err := p.Guest(ctx, image.GuestOptions{Swap: "vda", Resume: "vda"})
	if err != nil {
		t.Fatal(err)
	}
	// The root disk must outlive the first QEMU: an overlay of our own instead of the VM's.
	root := filepath.Join(dir, "root.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", g.Disks[0].Format,
		"-b", g.Disks[0].Path, root).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	g.Disks[0].Path, g.Disks[0].Format, g.Disks[0].Overlay = root, "qcow2", false
	opts := vmOptions(g, vm.Disk{Path: swap})

	bctx, bcancel := context.WithTimeout(ctx, g.BootTimeout)
	defer bcancel()
	v := vm.StartT(t, bctx, opts...)
	if _, err := v.WaitSerial(bctx, g.Ready); err != nil {
		t.Fatal(err)
	}
	if _, err := v.AttachAgent(bctx); err != nil {
		t.Fatal(err)
	}
	before, err := v.Console().RunOK(ctx, "head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /run/token; cat /run/token; echo; cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Agent().CallNoReply(ctx, "guest-suspend-disk", nil, 0); err != nil {
		t.Fatalf("guest-suspend-disk: %v", err)
	}
	start := time.Now()
	st, err := v.Wait(ctx)
	if err != nil || st.ExitCode() != 0 {
		t.Fatalf("QEMU after hibernation: %v %v", st, err)
	}
	t.Logf("hibernated in %.1fs", time.Since(start).Seconds())
	v.Close()

	start = time.Now()
	v2 := vm.StartT(t, bctx, opts...)
	after, err := v2.Console().RunOK(bctx, "cat /run/token; echo; cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resumed: console answering %.1fs after QEMU started", time.Since(start).Seconds())
	if after != before {
		t.Errorf("after resume the guest has %q, before it had %q: it booted afresh", after, before)
	}
	if strings.Contains(string(v2.SerialLog()), g.Ready) {
		t.Errorf("the resumed guest booted up to %q again", g.Ready)
	}
}
