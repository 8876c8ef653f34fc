package image

// The debian-cloud profile: a real Debian system (systemd, udev, cloud-init, Debian's cloud
// kernel and qemu-guest-agent) built from the host's own apt sources by mmdebstrap, without a
// loop device or a mount: mmdebstrap fills a directory, mkfs.ext4 -d turns it into a
// filesystem image, qemu-img convert into a compressed qcow2. The image's own kernel and initrd
// are copied out for direct kernel boot, so no boot loader is installed and every boot can
// carry kernel arguments (resume=, the fast TCG arguments). The agent under test is not in the
// image: each boot gets a NoCloud seed (seed.go).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qgakit/qgakit/images"
)

// cloudFormat names the builder's output format; bump it whenever the builder would produce a
// different image from the same inputs.
const cloudFormat = "debian-cloud/1"

// cloudDiskSize is the root filesystem's virtual size: the installed system takes about
// 700 MB, and specs write files of a few hundred MB into it. The qcow2 holds only what is used.
const cloudDiskSize = 4 << 30

// cloudRootLabel is the root filesystem's label, which the kernel command line and fstab name.
const cloudRootLabel = "rootfs"

// Cache file names inside a debian-cloud directory.
const (
	cloudDiskFile   = "disk.qcow2"
	cloudKernelFile = "vmlinuz"
	cloudInitrdFile = "initrd.img"
)

// Cloud is a built debian-cloud image in the cache.
type Cloud struct {
	// Dir is the cache directory holding the files below and manifest.json.
	Dir string
	// Disk is the root disk, a compressed qcow2 holding an ext4 filesystem labelled "rootfs"
	// on the whole disk. Boot it through an overlay: it is shared by every VM.
	Disk string
	// Kernel and Initrd are the image's own /boot/vmlinuz-* and /boot/initrd.img-*.
	Kernel string
	Initrd string
	// KernelVersion is the kernel's release, e.g. 6.1.0-56-cloud-amd64.
	KernelVersion string
	// Release is the image's Debian release (VERSION_CODENAME), which is the host's.
	Release string
}

// cloudInputs is everything the image is made from; its hash names the cache directory.
type cloudInputs struct {
	Format  string `json:"format"`
	Release string `json:"release"`
	// Packages are the recipe's packages and everything they depend on, as apt resolves them
	// from the host's package lists now ("name=version").
	Packages []string `json:"packages"`
	// Sources and AptOptions map the host's apt files the build uses to their sha256.
	Sources    map[string]string `json:"sources"`
	AptOptions map[string]string `json:"apt_options"`
	// Files maps each embedded file of images/debian-cloud (but the seed's) to its sha256.
	Files map[string]string `json:"files"`
}

func (in cloudInputs) key() string { return inputsKey(in) }

// cloudManifest is manifest.json in a debian-cloud directory.
type cloudManifest struct {
	Format        string      `json:"format"`
	Key           string      `json:"key"`
	Inputs        cloudInputs `json:"inputs"`
	KernelVersion string      `json:"kernel_version"`
	Release       string      `json:"release"`
	// Installed is what dpkg says the image holds ("name=version"), Essential packages
	// included: the record of what was really built, which apt may have resolved slightly
	// differently from the host's lists if the archive moved on.
	Installed    []string  `json:"installed"`
	Built        time.Time `json:"built"`
	BuildSeconds float64   `json:"build_seconds"`
	DiskSize     int64     `json:"disk_size"`
}

// LoadDebianCloud opens an already built debian-cloud directory (one BuildDebianCloud
// returned before) without asking apt anything.
func LoadDebianCloud(dir string) (*Cloud, error) {
	c := &Cloud{
		Dir:    dir,
		Disk:   filepath.Join(dir, cloudDiskFile),
		Kernel: filepath.Join(dir, cloudKernelFile),
		Initrd: filepath.Join(dir, cloudInitrdFile),
	}
	var m cloudManifest
	if err := loadManifest(dir, "debian-cloud", cloudFormat, &m, c.Disk, c.Kernel, c.Initrd); err != nil {
		return nil, err
	}
	c.KernelVersion, c.Release = m.KernelVersion, m.Release
	return c, nil
}

// BuildDebianCloud returns the debian-cloud image for the current inputs, building it into
// the cache first if needed (a few minutes: mmdebstrap downloads and installs about 200
// packages), with progress lines on progress (which may be nil). Like BuildTiny, concurrent
// callers share one build through a lock file, and the image appears by a rename.
func BuildDebianCloud(ctx context.Context, progress io.Writer) (*Cloud, error) {
	return cloudImages.get(ctx, progress, buildCloudIn)
}

var cloudImages builtImages[*Cloud]

func buildCloudIn(ctx context.Context, root string, progress io.Writer) (*Cloud, error) {
	in, err := resolveCloudInputs(ctx, root, progress)
	if err != nil {
		return nil, err
	}
	key := in.key()
	return buildCached(ctx, root, "debian-cloud", key, progress, LoadDebianCloud, func(tmp string) error {
		return buildCloud(ctx, in, key, tmp, progress)
	})
}

// recipeHashes maps the embedded recipe files that go into the image to their sha256. The
// seed's scripts are not among them: they travel in each boot's seed, and editing one must not
// rebuild the image.
func recipeHashes() (map[string]string, error) {
	all, err := hashFiles(images.DebianCloud)
	if err != nil {
		return nil, fmt.Errorf("hash embedded image files: %w", err)
	}
	files := map[string]string{}
	for p, sum := range all {
		if !strings.HasPrefix(p, "debian-cloud/seed/") {
			files[p] = sum
		}
	}
	return files, nil
}

// recipePackages reads images/debian-cloud/packages.
func recipePackages() ([]string, error) {
	b, err := images.DebianCloud.ReadFile("debian-cloud/packages")
	if err != nil {
		return nil, fmt.Errorf("read the package list: %w", err)
	}
	return parsePackageList(b), nil
}

// parsePackageList returns the names of a one-a-line list with # comments.
func parsePackageList(b []byte) []string {
	var pkgs []string
	for _, l := range strings.Split(string(b), "\n") {
		l, _, _ = strings.Cut(l, "#")
		if l = strings.TrimSpace(l); l != "" {
			pkgs = append(pkgs, l)
		}
	}
	return pkgs
}

// hostRelease is the host's VERSION_CODENAME: the host's apt sources are for that release,
// so the image is of that release too (the image's suite has to match its sources).
func hostRelease(osRelease string) (string, error) {
	b, err := os.ReadFile(osRelease)
	if err != nil {
		return "", fmt.Errorf("find the host's release: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VERSION_CODENAME="); ok {
			if v = strings.Trim(strings.TrimSpace(v), `"'`); v != "" {
				return v, nil
			}
		}
	}
	return "", fmt.Errorf("find the host's release: no VERSION_CODENAME in %s", osRelease)
}

// hostAptSources lists the host's apt source files under etc (normally /etc/apt), in the
// order apt reads them. They are handed to mmdebstrap as they are: the image is built from
// whatever archive, mirror or proxy the host itself uses, and no host name appears here.
func hostAptSources(etc string) ([]string, error) {
	var files []string
	if hasAptSource(filepath.Join(etc, "sources.list")) {
		files = append(files, filepath.Join(etc, "sources.list"))
	}
	ents, err := os.ReadDir(filepath.Join(etc, "sources.list.d"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read apt sources: %w", err)
	}
	for _, e := range ents { // ReadDir sorts by name, as apt does
		n := e.Name()
		if (strings.HasSuffix(n, ".list") || strings.HasSuffix(n, ".sources")) && hasAptSource(filepath.Join(etc, "sources.list.d", n)) {
			files = append(files, filepath.Join(etc, "sources.list.d", n))
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no apt sources in %s: the debian-cloud image is built from the host's own", etc)
	}
	return files, nil
}

// hasAptSource reports whether a sources file has an entry that is not commented out (one-line
// "deb ..." or deb822 "Types:"), and is not disabled with "Enabled: no".
func hasAptSource(p string) bool {
	b, err := os.ReadFile(p)
	if err != nil {
		return false
	}
	entry := false
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		lower := strings.ToLower(l)
		switch {
		case strings.HasPrefix(lower, "deb ") || strings.HasPrefix(lower, "deb-src ") || strings.HasPrefix(lower, "types:"):
			entry = true
		case strings.HasPrefix(lower, "enabled:") && strings.TrimSpace(lower[len("enabled:"):]) == "no":
			return false
		}
	}
	return entry
}

// hostAptOptions lists the host's apt.conf.d files that say how to reach the archive (a proxy)
// or how to judge it (an old snapshot's Valid-Until): mmdebstrap's apt needs the same to get
// the same packages. Others (docker's clean-up hooks, the host's own Recommends policy) would
// change the image, so they stay out.
func hostAptOptions(etc string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(etc, "apt.conf.d"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read apt options: %w", err)
	}
	var files []string
	for _, e := range ents {
		p := filepath.Join(etc, "apt.conf.d", e.Name())
		b, err := os.ReadFile(p)
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		if aptOptionRelevant(b) {
			files = append(files, p)
		}
	}
	return files, nil
}

func aptOptionRelevant(b []byte) bool {
	s := strings.ToLower(string(b))
	for _, k := range []string{"::proxy", "proxy \"", "check-valid-until", "check-date", "max-valid-time"} {
		if strings.Contains(s, k) {
			return true
		}
	}
	return false
}

// resolveCloudInputs hashes the recipe and the host's apt files and asks apt for the whole set
// of packages the recipe installs. apt's answer is itself cached under a key of everything it
// depends on (the package list, apt's lists and sources): it takes seconds on a loaded host.
func resolveCloudInputs(ctx context.Context, root string, progress io.Writer) (cloudInputs, error) {
	in := cloudInputs{Format: cloudFormat, Sources: map[string]string{}, AptOptions: map[string]string{}}
	var err error
	if in.Release, err = hostRelease("/etc/os-release"); err != nil {
		return in, err
	}
	sources, err := hostAptSources("/etc/apt")
	if err != nil {
		return in, err
	}
	for _, s := range sources {
		if in.Sources[s], err = fileSHA256(s); err != nil {
			return in, err
		}
	}
	opts, err := hostAptOptions("/etc/apt")
	if err != nil {
		return in, err
	}
	for _, o := range opts {
		if in.AptOptions[o], err = fileSHA256(o); err != nil {
			return in, err
		}
	}
	if in.Files, err = recipeHashes(); err != nil {
		return in, err
	}
	pkgs, err := recipePackages()
	if err != nil {
		return in, err
	}
	in.Packages, err = resolvePackageSet(ctx, root, pkgs, progress)
	return in, err
}

// resolvePackageSet returns the packages apt would install on an empty system for pkgs
// ("name=version", sorted), from the host's package lists.
func resolvePackageSet(ctx context.Context, root string, pkgs []string, progress io.Writer) ([]string, error) {
	lists, err := aptListsState(ctx)
	if err != nil {
		return nil, err
	}
	keyIn, _ := json.Marshal(struct {
		Pkgs  []string
		Lists []string
	}{pkgs, lists})
	sum := sha256.Sum256(keyIn)
	cachePath := filepath.Join(root, "apt-resolve-"+hex.EncodeToString(sum[:8])+".json")
	var cached []string
	if b, err := os.ReadFile(cachePath); err == nil && json.Unmarshal(b, &cached) == nil && len(cached) > 0 {
		return cached, nil
	}
	fmt.Fprintf(progress, "debian-cloud: resolving %d packages with apt\n", len(pkgs))
	start := time.Now()
	empty := filepath.Join(root, ".empty-dpkg-status")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		return nil, fmt.Errorf("resolve packages: %w", err)
	}
	args := []string{"-s", "-q", "-o", "Dir::State::status=" + empty, "-o", "APT::Install-Recommends=false",
		"-o", "Debug::NoLocking=true", "install"}
	out, err := runTool(ctx, "", "apt-get", append(args, pkgs...)...)
	if err != nil {
		return nil, fmt.Errorf("resolve the debian-cloud packages (is apt's package list current? apt-get update): %w", err)
	}
	set := parseSimulatedInstalls(out)
	if len(set) == 0 {
		return nil, fmt.Errorf("resolve the debian-cloud packages: apt-get -s installed nothing:\n%s", out)
	}
	fmt.Fprintf(progress, "debian-cloud: %d packages resolved in %.1fs\n", len(set), time.Since(start).Seconds())
	if b, err := json.Marshal(set); err == nil {
		tmp := cachePath + ".tmp" + strconv.Itoa(os.Getpid())
		// The resolution is only a cache: failing to keep it costs the next run a resolve.
		if os.WriteFile(tmp, b, 0o644) != nil || os.Rename(tmp, cachePath) != nil {
			_ = os.Remove(tmp)
		}
	}
	return set, nil
}

// parseSimulatedInstalls picks "Inst name (version ...)" lines out of apt-get -s.
func parseSimulatedInstalls(out []byte) []string {
	var set []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Inst ")
		if !ok {
			continue
		}
		name, rest, _ := strings.Cut(rest, " ")
		// An upgrade reads "Inst name [old] (new ...)": the version is the first in parentheses.
		_, ver, ok := strings.Cut(rest, "(")
		if !ok {
			continue
		}
		ver, _, _ = strings.Cut(ver, " ")
		set = append(set, name+"="+strings.TrimSuffix(ver, ")"))
	}
	sort.Strings(set)
	return set
}

// aptListsState describes apt's package lists (name, size, mtime of each index file) and the
// architecture: what apt-get -s resolves from.
func aptListsState(ctx context.Context) ([]string, error) {
	out, err := runTool(ctx, "", "apt-config", "shell", "LISTS", "Dir::State::lists/d")
	if err != nil {
		return nil, fmt.Errorf("find apt's lists: %w", err)
	}
	dir := "/var/lib/apt/lists"
	if _, v, ok := strings.Cut(strings.TrimSpace(string(out)), "="); ok {
		dir = strings.Trim(v, `'"`)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read apt's lists: %w", err)
	}
	var state []string
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		st, err := e.Info()
		if err != nil {
			continue
		}
		state = append(state, fmt.Sprintf("%s %d %d", e.Name(), st.Size(), st.ModTime().UnixNano()))
	}
	arch, err := runTool(ctx, "", "dpkg", "--print-architecture")
	if err != nil {
		return nil, err
	}
	return append(state, "arch "+strings.TrimSpace(string(arch))), nil
}

// buildCloud makes disk.qcow2, vmlinuz, initrd.img and manifest.json in out.
func buildCloud(ctx context.Context, in cloudInputs, key, out string, progress io.Writer) error {
	if os.Geteuid() != 0 {
		// mmdebstrap's unshare mode would need a tarball and subuid mappings; root mode
		// writes a plain directory that mkfs.ext4 -d copies with the right owners.
		return fmt.Errorf("building the debian-cloud image needs root (mmdebstrap --mode=root); build it once as root, or use IMAGE=file:<qcow2>")
	}
	if _, err := lookTool("mmdebstrap"); err != nil {
		return fmt.Errorf("mmdebstrap not found: install the cloud tools (scripts/install-deps.sh cloud)")
	}
	s := newStepper(progress, "debian-cloud", key, 4, fmt.Sprintf("%s, %d packages; this takes a few minutes", in.Release, len(in.Packages)))
	rootfs := filepath.Join(out, "rootfs")
	var (
		kver      string
		installed []string
	)
	err := s.do("mmdebstrap: download and install the packages", func() (string, error) {
		if err := runMmdebstrap(ctx, in, out, rootfs, progress); err != nil {
			return "", err
		}
		if err := os.RemoveAll(filepath.Join(out, "recipe")); err != nil {
			return "", fmt.Errorf("remove the recipe copy: %w", err)
		}
		var err error
		if kver, err = kernelRelease(rootfs); err != nil {
			return "", err
		}
		if installed, err = dpkgInstalled(ctx, rootfs); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d packages, kernel %s", len(installed), kver), nil
	})
	if err != nil {
		return err
	}
	err = s.do("copy the kernel and initrd out", func() (string, error) {
		if err := copyFile(filepath.Join(rootfs, "boot", "vmlinuz-"+kver), filepath.Join(out, cloudKernelFile), 0o644); err != nil {
			return "", err
		}
		return "", copyFile(filepath.Join(rootfs, "boot", "initrd.img-"+kver), filepath.Join(out, cloudInitrdFile), 0o644)
	})
	if err != nil {
		return err
	}
	raw := filepath.Join(out, "disk.raw")
	err = s.do("mkfs.ext4 -d: the root filesystem", func() (string, error) {
		f, err := os.Create(raw)
		if err != nil {
			return "", err
		}
		err = f.Truncate(cloudDiskSize)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", err
		}
		if _, err := runTool(ctx, "", "mkfs.ext4", "-q", "-F", "-t", "ext4", "-L", cloudRootLabel,
			"-d", rootfs, "-E", "root_owner=0:0", raw); err != nil {
			return "", err
		}
		return "", removeBuildDir(rootfs)
	})
	if err != nil {
		return err
	}
	var size int64
	err = s.do("qemu-img convert: compressed qcow2", func() (string, error) {
		// zstd clusters decompress faster than zlib ones; the guest reads about 150 MB of
		// them per boot.
		if _, err := runTool(ctx, "", "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-c",
			"-o", "compression_type=zstd", raw, filepath.Join(out, cloudDiskFile)); err != nil {
			return "", err
		}
		if err := os.Remove(raw); err != nil {
			return "", err
		}
		st, err := os.Stat(filepath.Join(out, cloudDiskFile))
		if err != nil {
			return "", err
		}
		size = st.Size()
		return fmt.Sprintf("%.0f MB", float64(size)/1e6), nil
	})
	if err != nil {
		return err
	}
	m := cloudManifest{Format: cloudFormat, Key: key, Inputs: in, KernelVersion: kver, Release: in.Release,
		Installed: installed, Built: time.Now().UTC(), BuildSeconds: s.elapsed().Seconds(), DiskSize: size}
	if err := writeManifest(out, m); err != nil {
		return err
	}
	s.built()
	return nil
}

// runMmdebstrap writes the recipe next to rootfs and runs mmdebstrap into rootfs, streaming
// its status lines to progress.
func runMmdebstrap(ctx context.Context, in cloudInputs, work, rootfs string, progress io.Writer) error {
	recipe := filepath.Join(work, "recipe")
	if err := extractFS(images.DebianCloud, "debian-cloud", recipe); err != nil {
		return fmt.Errorf("write the recipe: %w", err)
	}
	pkgs, err := recipePackages()
	if err != nil {
		return err
	}
	overlay := filepath.Join(recipe, "rootfs")
	args := []string{"--mode=root", "--variant=minbase", "--include=" + strings.Join(pkgs, ",")}
	for _, o := range sortedStrings(in.AptOptions) {
		args = append(args, "--aptopt="+o)
	}
	for _, v := range []string{"http_proxy", "https_proxy"} {
		if p := os.Getenv(v); p != "" {
			args = append(args, fmt.Sprintf(`--aptopt=Acquire::%s::Proxy "%s"`, strings.TrimSuffix(v, "_proxy"), p))
		}
	}
	// Manuals, documentation and translations are a third of a minimal system and no test
	// reads them.
	for _, o := range []string{"path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
		"path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
		"path-include=/usr/share/locale/locale.alias", "path-exclude=/usr/share/info/*"} {
		args = append(args, "--dpkgopt="+o)
	}
	args = append(args,
		// The overlay goes in before any package is installed (the initramfs settings must be
		// there when the kernel's postinst builds the initrd), and again at the end.
		"--setup-hook=mkdir -p \"$1\" && cp -a "+shQuote(overlay)+"/. \"$1\"/",
		"--customize-hook=sh "+shQuote(filepath.Join(recipe, "customize"))+" \"$1\" "+shQuote(overlay),
		in.Release, rootfs)
	args = append(args, sortedStrings(in.Sources)...)
	return runStreaming(ctx, progress, "debian-cloud:   ", "mmdebstrap", args...)
}

// shellQuote quotes s for sh.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// extractFS copies the tree under dir of fsys into out, making files that start with "#!"
// executable.
func extractFS(fsys fs.FS, dir, out string) error {
	return fs.WalkDir(fsys, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		dst := filepath.Join(out, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if bytes.HasPrefix(b, []byte("#!")) {
			mode = 0o755
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			return err
		}
		return os.Chmod(dst, mode) // WriteFile's mode passes through the umask
	})
}

// dpkgInstalled lists the packages installed in rootfs ("name=version", sorted).
func dpkgInstalled(ctx context.Context, rootfs string) ([]string, error) {
	out, err := runTool(ctx, "", "dpkg-query", "--admindir="+filepath.Join(rootfs, "var/lib/dpkg"),
		"-W", "-f", "${db:Status-Status} ${Package}=${Version}\n")
	if err != nil {
		return nil, fmt.Errorf("list the image's packages: %w", err)
	}
	var pkgs []string
	for _, l := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(l, "installed "); ok {
			pkgs = append(pkgs, p)
		}
	}
	sort.Strings(pkgs)
	return pkgs, nil
}

// runStreaming runs a long host tool, copying each line it prints to progress with prefix and
// the time since the start, and returns an error carrying the last lines when it fails.
func runStreaming(ctx context.Context, progress io.Writer, prefix, name string, args ...string) error {
	path, err := lookTool(name)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	// mmdebstrap runs apt and dpkg as children: on cancellation the whole group goes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	progress = &lockedWriter{w: progress} // the line copier and the heartbeat share it
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			if l == "" {
				continue
			}
			fmt.Fprintf(progress, "%s[%5.1fs] %s\n", prefix, time.Since(start).Seconds(), l)
			if tail = append(tail, l); len(tail) > 30 {
				tail = tail[1:]
			}
		}
		// A line too long for the scanner stops it: drain the rest so mmdebstrap never blocks.
		_, _ = io.Copy(io.Discard, pr)
	}()
	// mmdebstrap says nothing for minutes while dpkg unpacks: a heartbeat shows it is alive.
	beat := time.NewTicker(30 * time.Second)
	defer beat.Stop()
	go func() {
		for {
			select {
			case <-done:
				return
			case <-beat.C:
				fmt.Fprintf(progress, "%s[%5.1fs] (still working)\n", prefix, time.Since(start).Seconds())
			}
		}
	}()
	err = cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, strings.Join(tail, "\n"))
	}
	return nil
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// CloudOptions are the per-boot choices (*Cloud).Cmdline turns into kernel arguments. The rest
// of a boot's choices (the agent, its arguments, mounts, swap) travel in the NoCloud seed.
type CloudOptions struct {
	// Resume is the swap device to resume a hibernated guest from (resume=); "vdb" or
	// "/dev/vdb".
	Resume string
	// Extra are more kernel arguments, last, so they override the defaults.
	Extra []string
}

// Cmdline returns the kernel command line for a direct kernel boot of c.
func (c *Cloud) Cmdline(o CloudOptions) string {
	args := []string{"root=LABEL=" + cloudRootLabel, "ro",
		// ttyS0 carries the kernel log and the seed's "QGAKIT:" lines; ttyS1 is the console
		// shell. eth0 as in the tiny image, not a PCI-slot name.
		"console=ttyS0", "8250.nr_uarts=2", "net.ifnames=0",
		// The same TCG savings as the tiny image's (see (*Tiny).Cmdline), and systemd's status
		// lines off: they would interleave with what the harness reads on ttyS0.
		"quiet", "mitigations=off", "no_timer_check", "cryptomgr.notests",
		"initcall_blacklist=crypto_kdf108_init", "tsc=reliable", "systemd.show_status=false",
	}
	if khz := hostTSCkHz(); khz > 0 {
		args = append(args, "tsc_early_khz="+strconv.Itoa(khz))
	}
	if o.Resume != "" {
		args = append(args, "resume=/dev/"+strings.TrimPrefix(o.Resume, "/dev/"))
	}
	return strings.Join(append(args, o.Extra...), " ")
}
