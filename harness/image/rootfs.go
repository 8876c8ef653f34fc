package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/qgakit/qgakit/images"
)

// fsEntry is one entry of the initramfs being assembled. Later additions to the same path
// replace earlier ones (an image file replaces a busybox applet link).
type fsEntry struct {
	kind   byte // 'd' dir, 'f' file, 'l' symlink, 'c' char device
	mode   fs.FileMode
	data   []byte // file contents, or
	host   string // a host file to copy
	target string // symlink target
	dev    [2]uint32
}

// tinyDirs are the directories the initramfs starts with, with their modes.
var tinyDirs = map[string]fs.FileMode{
	"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
	"lib": 0o755, "lib/modules": 0o755, "etc": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755,
	"run": 0o755, "tmp": 0o777 | fs.ModeSticky, "mnt": 0o755, "root": 0o700, "opt": 0o755,
	"var": 0o755, "var/lib": 0o755, "var/log": 0o755, "var/tmp": 0o777 | fs.ModeSticky,
}

// writeTinyCpio writes the uncompressed base initramfs to dst: busybox and its applet links,
// the files of images/tiny/rootfs, the links of images/tiny/links, and the kernel modules
// with their load lists. It returns the number of entries.
func writeTinyCpio(ctx context.Context, dst, busybox, modDir string, ix *modIndex, mods moduleSet) (int, error) {
	ents := map[string]fsEntry{}
	for d, m := range tinyDirs {
		ents[d] = fsEntry{kind: 'd', mode: m}
	}
	// The kernel opens /dev/console for /init's standard streams before /init mounts devtmpfs.
	ents["dev/console"] = fsEntry{kind: 'c', mode: 0o600, dev: [2]uint32{5, 1}}

	ents["bin/busybox"] = fsEntry{kind: 'f', mode: 0o755, host: busybox}
	applets, err := busyboxApplets(ctx, busybox)
	if err != nil {
		return 0, err
	}
	for _, a := range applets {
		if a != "bin/busybox" {
			ents[a] = fsEntry{kind: 'l', target: "/bin/busybox"}
		}
	}

	err = fs.WalkDir(images.Tiny, "tiny/rootfs", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, "tiny/rootfs"), "/")
		if rel == "" {
			return nil
		}
		if d.IsDir() {
			if _, ok := ents[rel]; !ok {
				ents[rel] = fsEntry{kind: 'd', mode: 0o755}
			}
			return nil
		}
		b, err := images.Tiny.ReadFile(p)
		if err != nil {
			return err
		}
		// embed keeps no modes: a script is what must be executable.
		mode := fs.FileMode(0o644)
		if bytes.HasPrefix(b, []byte("#!")) {
			mode = 0o755
		}
		ents[rel] = fsEntry{kind: 'f', mode: mode, data: b}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read images/tiny/rootfs: %w", err)
	}

	links, err := images.Tiny.ReadFile("tiny/links")
	if err != nil {
		return 0, fmt.Errorf("read images/tiny/links: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(links))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 2 {
			return 0, fmt.Errorf("images/tiny/links line %d: want \"<path> <target>\"", line)
		}
		ents[path.Clean(f[0])] = fsEntry{kind: 'l', target: f[1]}
	}

	// Modules go flat into /lib/modules, each list in load order (dependencies first).
	for _, list := range []struct {
		name string
		mods []string
	}{{"early.list", mods.Early}, {"late.list", mods.Late}} {
		var b strings.Builder
		for _, m := range list.mods {
			base := filepath.Base(ix.path[m])
			ents["lib/modules/"+base] = fsEntry{kind: 'f', mode: 0o644, host: filepath.Join(modDir, ix.path[m])}
			b.WriteString(base + "\n")
		}
		ents["lib/modules/"+list.name] = fsEntry{kind: 'f', mode: 0o644, data: []byte(b.String())}
	}

	f, err := os.Create(dst)
	if err != nil {
		return 0, fmt.Errorf("create initramfs: %w", err)
	}
	defer f.Close()
	cw := NewCpioWriter(f)
	// Sorted paths put every directory before its contents.
	for _, p := range sortedStrings(ents) {
		if err := writeEntry(cw, p, ents[p]); err != nil {
			return 0, err
		}
	}
	if err := cw.Close(); err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("write initramfs: %w", err)
	}
	return len(ents), nil
}

func writeEntry(cw *CpioWriter, p string, e fsEntry) error {
	switch e.kind {
	case 'd':
		return cw.Dir(p, e.mode)
	case 'l':
		return cw.Symlink(p, e.target)
	case 'c':
		return cw.CharDev(p, e.mode, e.dev[0], e.dev[1])
	}
	if e.host == "" {
		return cw.File(p, e.mode, e.data)
	}
	return copyIntoCpio(cw, p, e.mode, e.host)
}

// copyIntoCpio streams a host file (following symlinks) into the archive.
func copyIntoCpio(cw *CpioWriter, name string, mode fs.FileMode, host string) error {
	f, err := os.Open(host)
	if err != nil {
		return fmt.Errorf("add %s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("add %s: %w", name, err)
	}
	return cw.FileFrom(name, mode, st.Size(), f)
}

// busyboxApplets asks the guest's busybox (same architecture as the host) where each applet
// belongs ("sbin/hwclock", "bin/sh", ...).
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	var applets []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			applets = append(applets, path.Clean(l))
		}
	}
	if len(applets) < 50 {
		return nil, fmt.Errorf("list busybox applets: only %d", len(applets))
	}
	return applets, nil
}
