// Package image builds and caches the guest images the harness boots, injects the agent under
// test into them, and makes data disks.
//
// The tiny profile is Debian's cloud kernel with a busybox initramfs whose /init lives in
// images/tiny (images/README.md describes it). Contract with harness/vm (both sides honour it):
//
//   - ttyS0 (the first -serial) carries the kernel log and /init's progress lines
//     "TINY: <event>": "TINY: READY" once the console shell and the agent supervisor run,
//     "TINY: agent-start" and "TINY: agent-exit rc=N" around each agent run,
//     "TINY: shutdown <mode>" before the guest powers off, halts or reboots,
//     "TINY: console-start" each time a ttyS1 shell starts, "TINY: late-modules-loaded"
//     once xfs, virtio_rng and vsock are loaded (after READY, unless disks are mounted).
//   - ttyS1 (the second -serial) runs a root busybox sh: no prompt, raw and without echo,
//     stdout and stderr on ttyS1, stdin /dev/null, respawned when it exits. Write to it only
//     after READY; after making the shell exit, wait for the next console-start.
//   - The supervisor runs AgentPath -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0
//     -l /run/qga.log <qga.args> whenever that port exists, and again 0.2 s after it exits.
//   - Network: 10.0.2.15/24 on eth0 via 10.0.2.2; every ethN up.
//   - /sbin/shutdown, poweroff, halt and reboot really do it; /sbin/hwclock is busybox's.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qgakit/qgakit/images"
)

// AgentPath is where the injected agent lives in the guest.
const AgentPath = "/opt/qga/agent"

// tinyFormat names the builder's output format; bump it whenever the builder would produce a
// different image from the same inputs, so old caches are not reused.
const tinyFormat = "tiny/2"

// kernelMeta is the Debian metapackage that names the current cloud kernel.
const kernelMeta = "linux-image-cloud-amd64"

// Tiny is a built tiny image in the cache.
type Tiny struct {
	// Dir is the cache directory holding the files below and manifest.json.
	Dir string
	// Kernel is the bzImage to pass to -kernel.
	Kernel string
	// Initramfs is the zstd-compressed initramfs without any agent.
	Initramfs string
	// KernelVersion is the kernel's release, e.g. 6.1.0-56-cloud-amd64.
	KernelVersion string
}

// tinyInputs is everything the image is made from; its hash names the cache directory.
type tinyInputs struct {
	Format  string        `json:"format"`
	Kernel  debPackage    `json:"kernel"`
	Busybox busyboxSource `json:"busybox"`
	// Files maps each embedded file of images/tiny to the sha256 of its contents.
	Files map[string]string `json:"files"`
}

// busyboxSource is where the guest's busybox comes from: the host's installed busybox-static
// (Path and SHA256 set), or the package downloaded with apt.
type busyboxSource struct {
	Package debPackage `json:"package"`
	Path    string     `json:"path,omitempty"`
	SHA256  string     `json:"sha256,omitempty"`
}

func (in tinyInputs) key() string { return inputsKey(in) }

// tinyManifest is manifest.json in a cache directory.
type tinyManifest struct {
	Format        string     `json:"format"`
	Key           string     `json:"key"`
	Inputs        tinyInputs `json:"inputs"`
	KernelVersion string     `json:"kernel_version"`
	Modules       moduleSet  `json:"modules"`
	Built         time.Time  `json:"built"`
	BuildSeconds  float64    `json:"build_seconds"`
	InitramfsSize int64      `json:"initramfs_size"`
	KernelSize    int64      `json:"kernel_size"`
}

// Cache file names inside a tiny directory.
const (
	kernelFile    = "vmlinuz"
	initramfsFile = "initramfs.cpio.zst"
)

// LoadTiny opens an already built tiny image directory (one BuildTiny returned before),
// without asking apt anything.
func LoadTiny(dir string) (*Tiny, error) {
	t := &Tiny{
		Dir:       dir,
		Kernel:    filepath.Join(dir, kernelFile),
		Initramfs: filepath.Join(dir, initramfsFile),
	}
	var m tinyManifest
	if err := loadManifest(dir, "tiny", tinyFormat, &m, t.Kernel, t.Initramfs); err != nil {
		return nil, err
	}
	t.KernelVersion = m.KernelVersion
	return t, nil
}

// BuildTiny returns the tiny image for the current inputs, building it into the cache first
// if needed and printing each step with its duration to progress (which may be nil). Several
// processes may call it at once: one builds while the others wait on a lock file, and the
// image appears in the cache by a rename, complete or not at all.
func BuildTiny(ctx context.Context, progress io.Writer) (*Tiny, error) {
	return tinyImages.get(ctx, progress, buildTinyIn)
}

var tinyImages builtImages[*Tiny]

func buildTinyIn(ctx context.Context, root string, progress io.Writer) (*Tiny, error) {
	updated := false
	for {
		t, err := buildTinyOnce(ctx, root, progress)
		var stale *staleAptError
		if err == nil || updated || !errors.As(err, &stale) || os.Geteuid() != 0 {
			return t, err
		}
		// A fresh machine's package lists can be missing or name a version the archive no
		// longer has: refresh once and resolve again.
		fmt.Fprintf(progress, "tiny: %v; refreshing apt's package lists\n", stale.err)
		if err := aptUpdate(ctx); err != nil {
			return nil, err
		}
		updated = true
	}
}

// staleAptError marks failures that an apt-get update may cure.
type staleAptError struct{ err error }

func (e *staleAptError) Error() string { return e.err.Error() }
func (e *staleAptError) Unwrap() error { return e.err }

func buildTinyOnce(ctx context.Context, root string, progress io.Writer) (*Tiny, error) {
	in, err := resolveTinyInputs(ctx)
	if err != nil {
		return nil, err
	}
	key := in.key()
	return buildCached(ctx, root, "tiny", key, progress, LoadTiny, func(tmp string) error {
		return buildTiny(ctx, in, key, tmp, progress)
	})
}

// resolveTinyInputs asks apt and dpkg for the package versions and hashes the embedded files.
func resolveTinyInputs(ctx context.Context) (tinyInputs, error) {
	in := tinyInputs{Format: tinyFormat}
	k, err := resolveKernel(ctx, kernelMeta)
	if err != nil {
		return in, &staleAptError{err}
	}
	in.Kernel = k
	if v := installedVersion(ctx, "busybox-static"); v != "" {
		p := "/bin/busybox"
		sum, err := fileSHA256(p)
		if err != nil {
			return in, fmt.Errorf("busybox-static is installed but: %w", err)
		}
		in.Busybox = busyboxSource{Package: debPackage{Name: "busybox-static", Version: v}, Path: p, SHA256: sum}
	} else {
		rec, err := aptRecord(ctx, "busybox-static")
		if err != nil {
			return in, &staleAptError{fmt.Errorf("resolve busybox-static: %w", err)}
		}
		in.Busybox = busyboxSource{Package: debPackage{Name: "busybox-static", Version: rec["Version"]}}
	}
	if in.Files, err = hashFiles(images.Tiny); err != nil {
		return in, fmt.Errorf("hash embedded image files: %w", err)
	}
	return in, nil
}

// hashFiles maps every file of fsys to the sha256 of its contents.
func hashFiles(fsys fs.FS) (map[string]string, error) {
	sums := map[string]string{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		sums[p] = hex.EncodeToString(sum[:])
		return nil
	})
	return sums, err
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildTiny makes vmlinuz, initramfs.cpio.zst and manifest.json in out.
func buildTiny(ctx context.Context, in tinyInputs, key, out string, progress io.Writer) error {
	s := newStepper(progress, "tiny", key, 6, fmt.Sprintf("kernel %s, busybox %s", in.Kernel, in.Busybox.Package))
	work := filepath.Join(out, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	var (
		kroot, kver, busybox string
		mods                 moduleSet
		modIx                *modIndex
	)
	err := s.do("download "+in.Kernel.String()+" with apt-get", func() (string, error) {
		deb, err := aptDownload(ctx, work, in.Kernel)
		if err != nil {
			return "", &staleAptError{err}
		}
		kroot = filepath.Join(work, "kernel")
		if _, err := runTool(ctx, "", "dpkg-deb", "-x", deb, kroot); err != nil {
			return "", err
		}
		os.Remove(deb)
		kver, err = kernelRelease(kroot)
		return kver, err
	})
	if err != nil {
		return err
	}
	err = s.do("resolve kernel modules", func() (string, error) {
		conf, err := images.Tiny.ReadFile("tiny/modules.conf")
		if err != nil {
			return "", err
		}
		c, err := parseModuleConf(conf)
		if err != nil {
			return "", err
		}
		modIx, err = loadModIndex(filepath.Join(kroot, "lib/modules", kver))
		if err != nil {
			return "", err
		}
		mods, err = modIx.resolveConf(c)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("early %s; late %s", strings.Join(mods.Early, " "), strings.Join(mods.Late, " ")), nil
	})
	if err != nil {
		return err
	}
	err = s.do("busybox from "+busyboxOrigin(in.Busybox), func() (string, error) {
		var err error
		busybox, err = fetchBusybox(ctx, in.Busybox, work)
		return busybox, err
	})
	if err != nil {
		return err
	}
	cpioPath := filepath.Join(work, "initramfs.cpio")
	err = s.do("write the initramfs archive", func() (string, error) {
		n, err := writeTinyCpio(ctx, cpioPath, busybox, filepath.Join(kroot, "lib/modules", kver), modIx, mods)
		if err != nil {
			return "", err
		}
		st, err := os.Stat(cpioPath)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d entries, %.1f MB", n, float64(st.Size())/1e6), nil
	})
	if err != nil {
		return err
	}
	err = s.do("compress it with zstd", func() (string, error) {
		dst := filepath.Join(out, initramfsFile)
		// Level 9 takes about a second; 19 saves under a tenth of the size for thirty times the
		// time, and the kernel decompresses either at the same speed.
		if _, err := runTool(ctx, "", "zstd", "-q", "-9", "-T0", "-f", "-o", dst, cpioPath); err != nil {
			return "", err
		}
		st, err := os.Stat(dst)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%.1f MB", float64(st.Size())/1e6), nil
	})
	if err != nil {
		return err
	}
	err = s.do("install the kernel and the manifest", func() (string, error) {
		if err := copyFile(filepath.Join(kroot, "boot", "vmlinuz-"+kver), filepath.Join(out, kernelFile), 0o644); err != nil {
			return "", err
		}
		if err := os.RemoveAll(work); err != nil {
			return "", fmt.Errorf("remove work dir: %w", err)
		}
		m := tinyManifest{Format: tinyFormat, Key: key, Inputs: in, KernelVersion: kver, Modules: mods,
			Built: time.Now().UTC(), BuildSeconds: s.elapsed().Seconds()}
		for p, size := range map[string]*int64{kernelFile: &m.KernelSize, initramfsFile: &m.InitramfsSize} {
			st, err := os.Stat(filepath.Join(out, p))
			if err != nil {
				return "", err
			}
			*size = st.Size()
		}
		return "", writeManifest(out, m)
	})
	if err != nil {
		return err
	}
	s.built()
	return nil
}

// kernelRelease finds the one kernel release an extracted kernel package holds.
func kernelRelease(root string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(root, "lib/modules"))
	if err != nil {
		return "", fmt.Errorf("find the kernel release: %w", err)
	}
	if len(ents) != 1 {
		return "", fmt.Errorf("find the kernel release: %d entries in lib/modules", len(ents))
	}
	kver := ents[0].Name()
	if _, err := os.Stat(filepath.Join(root, "boot", "vmlinuz-"+kver)); err != nil {
		return "", fmt.Errorf("kernel image: %w", err)
	}
	return kver, nil
}

func busyboxOrigin(b busyboxSource) string {
	if b.Path != "" {
		return b.Path + " (" + b.Package.String() + " installed)"
	}
	return b.Package.String() + " (apt-get download)"
}

// fetchBusybox returns the path of the busybox binary to use, checking that it is the one the
// key was computed from and that it is static (the initramfs has no libc).
func fetchBusybox(ctx context.Context, src busyboxSource, work string) (string, error) {
	p := src.Path
	if p != "" {
		sum, err := fileSHA256(p)
		if err != nil {
			return "", err
		}
		if sum != src.SHA256 {
			return "", fmt.Errorf("%s changed while building", p)
		}
	} else {
		deb, err := aptDownload(ctx, work, src.Package)
		if err != nil {
			return "", &staleAptError{err}
		}
		dir := filepath.Join(work, "busybox")
		if _, err := runTool(ctx, "", "dpkg-deb", "-x", deb, dir); err != nil {
			return "", err
		}
		p = filepath.Join(dir, "bin/busybox")
	}
	static, err := elfIsStatic(p)
	if err != nil {
		return "", err
	}
	if !static {
		return "", fmt.Errorf("%s is dynamically linked: the initramfs needs busybox-static's", p)
	}
	return p, nil
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

// sortedStrings returns the sorted keys of m.
func sortedStrings[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}
