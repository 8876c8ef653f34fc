package image

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func scriptAgent(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrepareFileImage(t *testing.T) {
	needTools(t, "qemu-img", "xorriso")
	img := filepath.Join(t.TempDir(), "cloud.qcow2")
	if o, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, o)
	}
	agent := scriptAgent(t)
	dir := t.TempDir()
	ctx := context.Background()
	p, err := Prepare(ctx, Config{Image: "file:" + img, Agent: agent, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if p.Profile != ProfileFile || p.Disk != img || p.DiskFormat != "qcow2" || p.DirectKernelBoot() {
		t.Errorf("prepared %+v, want the qcow2 file booted by the firmware", p)
	}
	if !strings.HasPrefix(p.Agent, dir+"/") {
		t.Errorf("agent %s is not a copy in %s", p.Agent, dir)
	}
	// Rewriting the host's binary after Prepare must not change what the seeds carry.
	if err := os.WriteFile(agent, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	// The JSON round trip is how the other Ginkgo processes get it.
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var q Prepared
	if err := json.Unmarshal(b, &q); err != nil {
		t.Fatal(err)
	}
	g, err := q.Guest(ctx, GuestOptions{Mounts: []string{"vda"}, AgentArgs: []string{"-v"}})
	if err != nil {
		t.Fatal(err)
	}
	if g.Kernel != "" || g.Ready != "QGAKIT: READY" || len(g.Disks) != 2 {
		t.Fatalf("guest %+v", g)
	}
	root, seed := g.Disks[0], g.Disks[1]
	if root.Path != img || !root.Boot || !root.Overlay || root.Format != "qcow2" {
		t.Errorf("root disk %+v: want an overlay over the image, booted by the firmware", root)
	}
	if !seed.ReadOnly || seed.Format != "raw" || filepath.Dir(seed.Path) != dir {
		t.Errorf("seed disk %+v", seed)
	}
	x, _ := extractISO(t, seed.Path)
	if got, _ := os.ReadFile(filepath.Join(x, "qgakit/agent")); string(got) != "#!/bin/sh\nexit 0\n" {
		t.Errorf("seed carries %q, want the agent as it was at Prepare", got)
	}
	if got := sourceConfig(t, filepath.Join(x, "qgakit/config")); got != "inject|vda|" {
		t.Errorf("config %q", got)
	}

	// The same options share a seed; other options get their own.
	g2, err := q.Guest(ctx, GuestOptions{Mounts: []string{"vda"}, AgentArgs: []string{"-v"}})
	if err != nil {
		t.Fatal(err)
	}
	if g2.Disks[1].Path != seed.Path {
		t.Errorf("same options, seeds %s and %s", seed.Path, g2.Disks[1].Path)
	}
	g3, err := q.Guest(ctx, GuestOptions{Mounts: []string{"vdb"}})
	if err != nil {
		t.Fatal(err)
	}
	if g3.Disks[1].Path == seed.Path {
		t.Error("other options got the same seed")
	}

	if _, err := q.Guest(ctx, GuestOptions{Resume: "vda"}); err == nil || !strings.Contains(err.Error(), "kernel arguments") {
		t.Errorf("resume= on a firmware-booted image: %v, want a refusal that says why", err)
	}
	if q.Marker(EventAgentStart) != "QGAKIT: agent-start" || q.AgentPath() != CloudAgentPath {
		t.Errorf("marker %q, agent path %q", q.Marker(EventAgentStart), q.AgentPath())
	}
}

func TestPrepareImageAgent(t *testing.T) {
	needTools(t, "qemu-img", "xorriso")
	img := filepath.Join(t.TempDir(), "cloud.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Prepare(context.Background(), Config{Image: "file:" + img, Agent: AgentFromImage, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if p.DiskFormat != "raw" || p.AgentPath() != ImageAgentPath {
		t.Errorf("prepared %+v, agent path %s", p, p.AgentPath())
	}
	g, err := p.Guest(context.Background(), GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	x, _ := extractISO(t, g.Disks[1].Path)
	if got := sourceConfig(t, filepath.Join(x, "qgakit/config")); got != "image||" {
		t.Errorf("config %q, want the image's own agent", got)
	}
}

func TestPrepareRefuses(t *testing.T) {
	agent := scriptAgent(t)
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Image: "windows", Agent: agent}, "want tiny, debian-cloud"},
		{Config{Image: "url:", Agent: agent}, "want tiny, debian-cloud"},
		{Config{Image: "url:http://127.0.0.1:1/x.qcow2", Agent: agent}, "IMAGE_SHA256"},
		{Config{Image: "url:http://127.0.0.1:1/x.qcow2", ImageSHA256: strings.Repeat("ab", 32), Offline: true, Agent: agent}, "OFFLINE=1"},
		{Config{Image: "tiny", Agent: AgentFromImage}, "no agent of its own"},
		{Config{Image: "file:/nonexistent/x.qcow2", Agent: agent}, "/nonexistent/x.qcow2"},
	} {
		c.cfg.Dir = t.TempDir()
		_, err := Prepare(context.Background(), c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Prepare(%+v): %v, want an error mentioning %q", c.cfg, err, c.want)
		}
	}
}

func TestTinyGuestIsTheTinyBoot(t *testing.T) {
	p := &Prepared{Profile: ProfileTiny, Kernel: "/k", Initrd: "/i", Agent: "/a", Dir: t.TempDir()}
	o := GuestOptions{AgentArgs: []string{"-v"}, Mounts: []string{"vda"}, Swap: "vdb", Resume: "vdb", Extra: []string{"tiny.pm=1"}}
	g, err := p.Guest(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	want := (&Tiny{}).Cmdline(TinyOptions(o))
	if g.Kernel != "/k" || g.Initrd != "/i" || g.Cmdline != want || len(g.Disks) != 0 || g.Ready != "TINY: READY" {
		t.Errorf("tiny guest %+v, want the kernel, the injected initrd and cmdline %q", g, want)
	}
	if p.Marker(EventAgentExit(137)) != "TINY: agent-exit rc=137" || p.Marker(EventShutdown("halt")) != "TINY: shutdown halt" ||
		p.AgentPath() != AgentPath {
		t.Errorf("tiny markers or agent path wrong")
	}
}

func TestCloudCmdline(t *testing.T) {
	c := (&Cloud{}).Cmdline(CloudOptions{Resume: "vdb", Extra: []string{"loglevel=7"}})
	f := strings.Fields(c)
	for _, want := range []string{"root=LABEL=rootfs", "console=ttyS0", "net.ifnames=0", "resume=/dev/vdb"} {
		if !strings.Contains(" "+c+" ", " "+want+" ") {
			t.Errorf("cmdline %q lacks %s", c, want)
		}
	}
	if f[len(f)-1] != "loglevel=7" {
		t.Errorf("extra arguments must come last to override: %q", c)
	}
}
