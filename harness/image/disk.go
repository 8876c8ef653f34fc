package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// DiskFile is a file to put on an ext4 data disk.
type DiskFile struct {
	// Path is relative to the filesystem's root ("dir/file" or "/dir/file").
	Path string
	// Mode is its permission bits (0644 when zero).
	Mode fs.FileMode
	// Data is its contents.
	Data []byte
}

// DiskSpec describes a data disk.
type DiskSpec struct {
	// Size is the virtual size in bytes; zero picks a default per kind (ext4 64 MiB,
	// xfs 320 MiB, the smallest mkfs.xfs accepts, and swap 512 MiB, enough to hibernate a
	// 512 MiB guest). The qcow2 file holds only what is written.
	Size int64
	// Label is the filesystem or swap label, if any.
	Label string
	// Files are written into an ext4 disk by mkfs.ext4 -d; other kinds refuse them.
	Files []DiskFile
}

const mib = 1 << 20

// CreateExt4Disk writes out, a qcow2 image holding an ext4 filesystem with spec.Files, made
// with mkfs.ext4 -d: no loop device and no mount on the host.
func CreateExt4Disk(ctx context.Context, out string, spec DiskSpec) error {
	return createDisk(ctx, out, spec, 64*mib, func(raw, tmp string) error {
		root := filepath.Join(tmp, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			return err
		}
		for _, f := range spec.Files {
			p := filepath.Join(root, filepath.Clean("/"+f.Path))
			if p == root {
				return fmt.Errorf("disk file %q: not a file name", f.Path)
			}
			mode := f.Mode
			if mode == 0 {
				mode = 0o644
			}
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, f.Data, mode); err != nil {
				return err
			}
			if err := os.Chmod(p, mode); err != nil { // WriteFile's mode passes through the umask
				return err
			}
		}
		args := []string{"-q", "-F", "-t", "ext4", "-d", root, "-E", "root_owner=0:0"}
		if spec.Label != "" {
			args = append(args, "-L", spec.Label)
		}
		_, err := runTool(ctx, "", "mkfs.ext4", append(args, raw)...)
		return err
	})
}

// CreateXFSDisk writes out, a qcow2 image holding an empty xfs filesystem.
func CreateXFSDisk(ctx context.Context, out string, spec DiskSpec) error {
	if len(spec.Files) > 0 {
		return fmt.Errorf("xfs disk %s: files are only supported on ext4", out)
	}
	return createDisk(ctx, out, spec, 320*mib, func(raw, _ string) error {
		args := []string{"-q", "-f"}
		if spec.Label != "" {
			args = append(args, "-L", spec.Label)
		}
		_, err := runTool(ctx, "", "mkfs.xfs", append(args, raw)...)
		return err
	})
}

// CreateSwapDisk writes out, a qcow2 image holding a swap area (for tiny.swap= and resume=).
func CreateSwapDisk(ctx context.Context, out string, spec DiskSpec) error {
	if len(spec.Files) > 0 {
		return fmt.Errorf("swap disk %s: files are only supported on ext4", out)
	}
	return createDisk(ctx, out, spec, 512*mib, func(raw, _ string) error {
		var args []string
		if spec.Label != "" {
			args = append(args, "-L", spec.Label)
		}
		_, err := runTool(ctx, "", "mkswap", append(args, raw)...)
		return err
	})
}

// createDisk makes a sparse raw file of the spec's size next to out, lets mkfs format it, and
// converts it to qcow2 at out (via a temp name, so out is never half written).
func createDisk(ctx context.Context, out string, spec DiskSpec, defSize int64, mkfs func(raw, tmp string) error) error {
	size := spec.Size
	if size == 0 {
		size = defSize
	}
	if size < 0 {
		return fmt.Errorf("disk %s: negative size %d", out, size)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("disk %s: %w", out, err)
	}
	defer os.RemoveAll(tmp)
	raw := filepath.Join(tmp, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		return fmt.Errorf("disk %s: %w", out, err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("disk %s: size the raw file: %w", out, err)
	}
	if err := mkfs(raw, tmp); err != nil {
		return fmt.Errorf("disk %s: %w", out, err)
	}
	qcow := filepath.Join(tmp, "disk.qcow2")
	if _, err := runTool(ctx, "", "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow); err != nil {
		return fmt.Errorf("disk %s: %w", out, err)
	}
	if err := os.Rename(qcow, out); err != nil {
		return fmt.Errorf("disk %s: %w", out, err)
	}
	return nil
}
