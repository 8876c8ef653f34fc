package image

// Profiles: one interface to every image the suite can run on, so that specs need not know
// which one it is (see Prepared).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Profile kinds, as Prepared.Profile names them.
const (
	ProfileTiny        = "tiny"
	ProfileDebianCloud = "debian-cloud"
	ProfileURL         = "url"
	ProfileFile        = "file"
)

// AgentFromImage as Config.Agent (AGENT=image) runs the image's own qemu-ga instead of
// injecting one. Only cloud images have one.
const AgentFromImage = "image"

// Events the guest reports on ttyS0; Marker turns them into the line a profile prints.
const (
	// EventReady: the console shell and the agent supervisor run, disks are mounted.
	EventReady = "READY"
	// EventAgentStart: the supervisor starts the agent (the port exists).
	EventAgentStart = "agent-start"
	// EventConsoleStart: a new console shell reads ttyS1.
	EventConsoleStart = "console-start"
)

// EventAgentExit is the event of the agent exiting with status rc (137 after a SIGKILL).
func EventAgentExit(rc int) string { return fmt.Sprintf("agent-exit rc=%d", rc) }

// EventShutdown is the event printed as the last thing before the guest powers off ("poweroff"),
// halts ("halt") or reboots ("reboot").
func EventShutdown(mode string) string { return "shutdown " + mode }

// Config says which image to prepare and with which agent.
type Config struct {
	// Image is IMAGE: "" or "tiny", "debian-cloud", "url:<URL>" or "file:<path>".
	Image string
	// ImageSHA256 is IMAGE_SHA256, the digest an IMAGE=url: download must have.
	ImageSHA256 string
	// Offline (OFFLINE=1) forbids downloads: IMAGE=url: must be in the cache.
	Offline bool
	// Agent is the agent binary on the host, or AgentFromImage.
	Agent string
	// Dir receives what Prepare and Guest make (an injected initramfs, a copy of the agent,
	// seeds); it must outlive every VM booted from the result. Parallel processes may share it.
	Dir string
	// Progress gets build and download progress; nil discards it.
	Progress io.Writer
}

// ConfigFromEnv fills Image, ImageSHA256 and Offline from IMAGE, IMAGE_SHA256 and OFFLINE
// (1, true or yes). The agent and the directory are the caller's.
func ConfigFromEnv() Config {
	off := strings.ToLower(os.Getenv("OFFLINE"))
	return Config{
		Image:       os.Getenv("IMAGE"),
		ImageSHA256: os.Getenv("IMAGE_SHA256"),
		Offline:     off == "1" || off == "true" || off == "yes",
	}
}

// Prepared is an image made ready to boot with one agent. It is plain data that survives a
// JSON round trip, so one process can prepare it and others use it.
//
//	IMAGE=tiny (default)    the busybox initramfs (BuildTiny), the agent appended as a cpio archive
//	IMAGE=debian-cloud      the mmdebstrap-built Debian system (BuildDebianCloud), a NoCloud seed
//	IMAGE=url:<URL>         a downloaded cloud image (FetchImage: IMAGE_SHA256 required,
//	                        OFFLINE=1 for the cache only), a NoCloud seed
//	IMAGE=file:<path>       a local qcow2 or raw cloud image, a NoCloud seed
//
// This package does not import harness/vm (harness/vm's tests import it): a Guest is plain data
// that maps one to one onto vm options. A suite uses it like this:
//
//	p, err := image.Prepare(ctx, image.Config{Image: os.Getenv("IMAGE"), ImageSHA256: os.Getenv("IMAGE_SHA256"),
//		Offline: os.Getenv("OFFLINE") == "1", Agent: agent, Dir: suiteTmp, Progress: GinkgoWriter})
//	// p is JSON: SynchronizedBeforeSuite hands it to every process.
//	g, err := p.Guest(ctx, image.GuestOptions{Mounts: []string{"vda"}, AgentArgs: args})
//	var opts []vm.Option
//	if g.Kernel != "" {
//		opts = append(opts, vm.WithKernel(g.Kernel, g.Initrd, g.Cmdline))
//	}
//	if g.MemoryMiB > 0 {
//		opts = append(opts, vm.WithMemory(g.MemoryMiB))
//	}
//	if g.CPU != "" {
//		opts = append(opts, vm.WithCPU(g.CPU))
//	}
//	opts = append(opts, specDisks...) // the spec's data disks first: they are vda, vdb, ...
//	for _, d := range g.Disks {       // then the profile's own (root, seed), found by label
//		opts = append(opts, vm.WithDisk(vm.Disk{Path: d.Path, Format: d.Format, Overlay: d.Overlay,
//			ReadOnly: d.ReadOnly, Boot: d.Boot, Node: d.Node}))
//	}
//	v := vm.StartT(GinkgoT(), ctx, opts...)
//	_, err = v.WaitSerial(ctx, g.Ready) // = p.Marker(image.EventReady)
//	_, err = v.AttachAgent(ctx)
//	// A restart of the agent shows as p.Marker(image.EventAgentStart) on ttyS0
//	// (v.WaitSerialAfter); the agent's path in the guest is p.AgentPath().
//
// A cloud guest takes from half a minute (quiet host) to minutes (loaded host) to boot: boot it
// once into a vm.Template (ready: WaitSerial(g.Ready), then Console().WaitReady) and restore
// it per spec, which takes about two seconds.
type Prepared struct {
	// Profile is ProfileTiny, ProfileDebianCloud, ProfileURL or ProfileFile.
	Profile string `json:"profile"`
	// Image is the IMAGE value it came from.
	Image string `json:"image"`
	// Agent is the agent binary on the host (a copy in Dir for cloud images), or
	// AgentFromImage.
	Agent string `json:"agent"`
	// Dir is Config.Dir.
	Dir string `json:"dir"`
	// Kernel and Initrd boot the guest directly (tiny and debian-cloud); for tiny, Initrd
	// holds the agent.
	Kernel string `json:"kernel,omitempty"`
	Initrd string `json:"initrd,omitempty"`
	// Disk is a cloud image's root disk and DiskFormat its format ("qcow2" or "raw").
	Disk       string `json:"disk,omitempty"`
	DiskFormat string `json:"disk_format,omitempty"`
}

// Prepare builds, downloads or opens the image c names and makes the agent ready to go into
// it: for tiny the agent is injected into an initramfs in c.Dir now; for cloud images it is
// copied to c.Dir and each Guest gets a seed carrying it.
func Prepare(ctx context.Context, c Config) (*Prepared, error) {
	if c.Dir == "" {
		return nil, fmt.Errorf("prepare image: Config.Dir is empty")
	}
	if c.Agent == "" {
		return nil, fmt.Errorf("prepare image: Config.Agent is empty (a binary, or %q for the image's own)", AgentFromImage)
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("prepare image: %w", err)
	}
	p := &Prepared{Image: c.Image, Dir: c.Dir}
	kind, arg, _ := strings.Cut(c.Image, ":")
	switch {
	case c.Image == "" || c.Image == ProfileTiny:
		p.Profile = ProfileTiny
		if c.Agent == AgentFromImage {
			return nil, fmt.Errorf("AGENT=image: the tiny image has no agent of its own; use IMAGE=debian-cloud")
		}
		t, err := BuildTiny(ctx, c.Progress)
		if err != nil {
			return nil, err
		}
		p.Kernel = t.Kernel
		p.Initrd = filepath.Join(c.Dir, "initrd-agent")
		if err := t.InjectAgent(ctx, c.Agent, p.Initrd); err != nil {
			return nil, err
		}
		p.Agent = c.Agent
		return p, nil
	case c.Image == ProfileDebianCloud:
		p.Profile = ProfileDebianCloud
		cl, err := BuildDebianCloud(ctx, c.Progress)
		if err != nil {
			return nil, err
		}
		p.Kernel, p.Initrd, p.Disk, p.DiskFormat = cl.Kernel, cl.Initrd, cl.Disk, "qcow2"
	case kind == ProfileURL && arg != "":
		p.Profile = ProfileURL
		path, err := FetchImage(ctx, FetchOptions{URL: arg, SHA256: c.ImageSHA256, Offline: c.Offline, Progress: c.Progress})
		if err != nil {
			return nil, err
		}
		if p.DiskFormat, err = diskFormat(ctx, path); err != nil {
			return nil, err
		}
		p.Disk = path
	case kind == ProfileFile && arg != "":
		p.Profile = ProfileFile
		path, err := filepath.Abs(arg)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("IMAGE=file:%s: %w", arg, err)
		}
		if p.DiskFormat, err = diskFormat(ctx, path); err != nil {
			return nil, fmt.Errorf("IMAGE=file:%s: %w", arg, err)
		}
		p.Disk = path
	default:
		return nil, fmt.Errorf("IMAGE=%s: want tiny, debian-cloud, url:<URL> (with IMAGE_SHA256=<hex>) or file:<path>", c.Image)
	}
	if c.Agent == AgentFromImage {
		p.Agent = AgentFromImage
		return p, nil
	}
	// A copy: the seeds made during the run carry the binary as it was when the run began,
	// even if bin/qga is rebuilt meanwhile.
	sum, err := fileSHA256(c.Agent)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := checkAgentBinary(c.Agent); err != nil {
		return nil, err
	}
	p.Agent = filepath.Join(c.Dir, "agent-"+sum[:16])
	if _, err := os.Stat(p.Agent); err != nil {
		tmp := p.Agent + ".tmp" + fmt.Sprint(os.Getpid())
		if err := copyFile(c.Agent, tmp, 0o755); err != nil {
			return nil, err
		}
		if err := os.Rename(tmp, p.Agent); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	return p, nil
}

// diskFormat asks qemu-img what a disk image is, and accepts what a cloud image comes as.
func diskFormat(ctx context.Context, path string) (string, error) {
	out, err := runTool(ctx, "", "qemu-img", "info", "--output=json", path)
	if err != nil {
		return "", err
	}
	var info struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	if info.Format != "qcow2" && info.Format != "raw" {
		return "", fmt.Errorf("%s is a %q image; want qcow2 or raw (a .tar.xz or .xz must be unpacked first)", path, info.Format)
	}
	return info.Format, nil
}

// GuestOptions are the per-boot choices a spec makes, whatever the image.
type GuestOptions struct {
	// AgentArgs are appended to the agent's command line.
	AgentArgs []string
	// Mounts are the spec's data disks (vda, vdb: they come before the profile's own disks)
	// to mount on /mnt/<name> before the guest is ready.
	Mounts []string
	// Swap is a disk to enable as swap.
	Swap string
	// Resume is the swap disk to resume a hibernated guest from (resume=). It needs a direct
	// kernel boot (tiny, debian-cloud).
	Resume string
	// Extra are more kernel arguments, last (direct kernel boot only).
	Extra []string
}

// Guest is everything harness/vm needs to boot one guest (see the example at the top of
// profile.go).
type Guest struct {
	// Kernel, Initrd and Cmdline boot a kernel directly (vm.WithKernel); with Kernel empty,
	// the firmware boots the disk marked Boot.
	Kernel  string
	Initrd  string
	Cmdline string
	// Disks are the profile's own disks, to attach after the spec's.
	Disks []GuestDisk
	// Ready is the ttyS0 line that says the guest is ready (Marker(EventReady)).
	Ready string
	// MemoryMiB is the memory the profile wants; 0 when the harness's default does.
	MemoryMiB int
	// CPU is the QEMU CPU model (vm.WithCPU) the profile boots best with; empty when the
	// harness's default does.
	CPU string
	// BootTimeout is how long a boot up to Ready may take on a loaded TCG host.
	BootTimeout time.Duration
}

// GuestDisk is one of a profile's disks, with the fields of vm.Disk.
type GuestDisk struct {
	Path     string
	Format   string
	Overlay  bool
	ReadOnly bool
	Boot     bool
	Node     string
}

// Marker is the ttyS0 line (or the start of it) by which the guest reports event: "TINY: " or
// "QGAKIT: " and the event.
func (p *Prepared) Marker(event string) string {
	if p.Profile == ProfileTiny {
		return "TINY: " + event
	}
	return "QGAKIT: " + event
}

// AgentPath is the agent's path in the guest, as the guest's process list shows it.
func (p *Prepared) AgentPath() string {
	switch {
	case p.Profile == ProfileTiny:
		return AgentPath
	case p.Agent == AgentFromImage:
		return ImageAgentPath
	}
	return CloudAgentPath
}

// DirectKernelBoot reports whether the profile boots a kernel directly, so kernel arguments
// (GuestOptions.Resume, Extra) are possible.
func (p *Prepared) DirectKernelBoot() bool { return p.Kernel != "" }

// Guest returns how to boot one guest with o. For cloud images it writes the boot's seed into
// p.Dir (one per distinct o, shared by the boots that use the same).
func (p *Prepared) Guest(ctx context.Context, o GuestOptions) (*Guest, error) {
	g := &Guest{Ready: p.Marker(EventReady)}
	if p.Profile == ProfileTiny {
		g.Kernel, g.Initrd, g.BootTimeout = p.Kernel, p.Initrd, 2*time.Minute
		g.Cmdline = (&Tiny{}).Cmdline(TinyOptions(o))
		return g, nil
	}
	if !p.DirectKernelBoot() && (o.Resume != "" || len(o.Extra) > 0) {
		return nil, fmt.Errorf("IMAGE=%s boots through its own boot loader: kernel arguments (resume=, %q) need IMAGE=tiny or debian-cloud", p.Image, o.Extra)
	}
	so := SeedOptions{AgentArgs: o.AgentArgs, Mounts: o.Mounts, Swap: o.Swap}
	if p.Agent != AgentFromImage {
		so.Agent = p.Agent
	}
	seed, err := p.seedFor(ctx, so)
	if err != nil {
		return nil, err
	}
	if p.DirectKernelBoot() {
		g.Kernel, g.Initrd = p.Kernel, p.Initrd
		g.Cmdline = (&Cloud{}).Cmdline(CloudOptions{Resume: o.Resume, Extra: o.Extra})
	}
	g.Disks = []GuestDisk{
		{Path: p.Disk, Format: p.DiskFormat, Overlay: true, Boot: !p.DirectKernelBoot(), Node: "sysroot"},
		{Path: seed, Format: "raw", ReadOnly: true, Node: "cidata"},
	}
	// systemd, udev and cloud-init's Python under TCG: half a minute on a quiet host, several
	// on a loaded one.
	g.BootTimeout = 6 * time.Minute
	// Measured: a systemd guest boots about 5 s faster under TCG with qemu64 than with max.
	g.CPU = "qemu64"
	return g, nil
}

// seedFor returns the seed for so in p.Dir, writing it unless an identical one is there.
func (p *Prepared) seedFor(ctx context.Context, so SeedOptions) (string, error) {
	files, err := hashFiles(seedFS())
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(struct {
		O     SeedOptions
		Files map[string]string
	}{so, files})
	sum := sha256.Sum256(b)
	key := hex.EncodeToString(sum[:8])
	so.InstanceID = "qgakit-" + key
	path := filepath.Join(p.Dir, "seed-"+key+".iso")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := WriteSeed(ctx, path, so); err != nil {
		return "", err
	}
	return path, nil
}
