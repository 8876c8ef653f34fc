package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The lookup must find exactly the directory a build would make, and never build one.
func TestCachedDebianCloud(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("no apt-get: the inputs cannot be resolved")
	}
	root := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", root)
	ctx := context.Background()
	_, err := CachedDebianCloud(ctx)
	if err != nil && !errors.Is(err, ErrNotCached) {
		t.Skipf("the host cannot resolve the debian-cloud inputs: %v", err)
	}
	if err == nil {
		t.Fatal("an empty cache has a debian-cloud image")
	}
	cache := filepath.Join(root, "qgakit")
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if e.IsDir() {
			t.Errorf("the lookup made %s", e.Name())
		}
	}

	in, err := resolveCloudInputs(ctx, cache, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "debian-cloud-"+in.key())
	writeFiles(t, dir, map[string]string{cloudDiskFile: "disk", cloudKernelFile: "kernel", cloudInitrdFile: "initrd"})
	if _, err := CachedDebianCloud(ctx); !errors.Is(err, ErrNotCached) {
		t.Errorf("a directory without a manifest: %v, want ErrNotCached", err)
	}
	if err := writeManifest(dir, cloudManifest{Format: cloudFormat, Key: in.key(), KernelVersion: "6.1.0-99-cloud-amd64"}); err != nil {
		t.Fatal(err)
	}
	c, err := CachedDebianCloud(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Dir != dir || c.KernelVersion != "6.1.0-99-cloud-amd64" {
		t.Errorf("found %+v, want %s", c, dir)
	}
}
