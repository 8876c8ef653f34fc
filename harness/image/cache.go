package image

// What the built profiles (tiny, debian-cloud) share about their cache: a directory
// <CacheRoot>/<profile>-<key> named by a hash of the inputs, made by one builder at a time
// under <profile>-<key>.lock, built in a temp dir .<profile>-<key>.tmp-* and renamed into
// place, so that a reader finds a complete image or none.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// manifestFile is the name of a cache directory's description of itself, written last.
const manifestFile = "manifest.json"

// CacheRoot is the project's cache directory, ${XDG_CACHE_HOME:-~/.cache}/qgakit.
func CacheRoot() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the cache directory: %w", err)
	}
	return filepath.Join(d, "qgakit"), nil
}

// inputsKey is the short hash of a profile's inputs that names its cache directory.
func inputsKey(in any) string {
	b, _ := json.Marshal(in) // maps marshal with sorted keys: the key is stable
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// loadManifest reads dir's manifest into m, which must be of format, and checks that each of
// files is there: what makes dir a usable image of profile.
func loadManifest(dir, profile, format string, m any, files ...string) error {
	p := filepath.Join(dir, manifestFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("read %s manifest: %w", profile, err)
	}
	var f struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("parse %s: %w", p, err)
	}
	if f.Format != format {
		return fmt.Errorf("%s image %s has format %q, want %q", profile, dir, f.Format, format)
	}
	if err := json.Unmarshal(b, m); err != nil {
		return fmt.Errorf("parse %s: %w", p, err)
	}
	for _, p := range files {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s image incomplete: %w", profile, err)
		}
	}
	return nil
}

// writeManifest writes m as out's manifest.
func writeManifest(out string, m any) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, manifestFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// builtImages remembers, per cache root, the image a profile's Build function returned in this
// process: resolving the inputs asks apt, which costs a noticeable fraction of a second under
// load (seconds for debian-cloud), and once per process and cache root is enough.
type builtImages[T any] struct {
	mu     sync.Mutex
	byRoot map[string]T
}

// get returns the image remembered for the cache root, or builds it with build (which gets an
// existing root and a non-nil progress) and remembers it if that succeeds. Concurrent callers wait for one build.
func (b *builtImages[T]) get(ctx context.Context, progress io.Writer, build func(ctx context.Context, root string, progress io.Writer) (T, error)) (T, error) {
	if progress == nil {
		progress = io.Discard
	}
	root, err := CacheRoot()
	if err != nil {
		var zero T
		return zero, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if img, ok := b.byRoot[root]; ok {
		return img, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		var zero T
		return zero, fmt.Errorf("create cache root: %w", err)
	}
	img, err := build(ctx, root, progress)
	if err == nil {
		if b.byRoot == nil {
			b.byRoot = map[string]T{}
		}
		b.byRoot[root] = img
	}
	return img, err
}

// buildCached returns the image of profile with inputs key in the existing cache root: load's answer for
// <root>/<profile>-<key> if that is usable, and otherwise, holding the key's lock, what build
// makes in a fresh temp dir, renamed into place. Several processes may call it at once: one
// builds while the others wait, and then they load its result.
func buildCached[T any](ctx context.Context, root, profile, key string, progress io.Writer,
	load func(dir string) (T, error), build func(tmp string) error) (T, error) {
	var zero T
	dir := filepath.Join(root, profile+"-"+key)
	if img, err := load(dir); err == nil {
		return img, nil
	}
	unlock, err := lockFile(ctx, dir+".lock", progress)
	if err != nil {
		return zero, err
	}
	defer unlock()
	if img, err := load(dir); err == nil {
		return img, nil // another process built it while we waited
	}
	if err := sweepStaleBuilds(root, profile, key); err != nil {
		return zero, err
	}
	tmp, err := os.MkdirTemp(root, "."+profile+"-"+key+".tmp-")
	if err != nil {
		return zero, fmt.Errorf("create build dir: %w", err)
	}
	// The deferred removal is a no-op after the rename; on failure its error would hide the
	// build's, and the next build's sweep retries it.
	defer func() { _ = removeBuildDir(tmp) }()
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp's 0700 would survive the rename
		return zero, fmt.Errorf("create build dir: %w", err)
	}
	if err := build(tmp); err != nil {
		return zero, err
	}
	if err := os.RemoveAll(dir); err != nil { // an invalid leftover that load refused
		return zero, fmt.Errorf("remove old %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return zero, fmt.Errorf("install %s image: %w", profile, err)
	}
	return load(dir)
}

// sweepStaleBuilds removes the temp dirs of profile's builders that died (killed, so their
// deferred clean-up never ran): up to a gigabyte each, possibly with mmdebstrap's mounts still
// inside. The caller holds the lock of key, so that key's temp dirs are stale; another key's
// are stale when nobody holds its lock.
func sweepStaleBuilds(root, profile, key string) error {
	dirs, _ := filepath.Glob(filepath.Join(root, "."+profile+"-*.tmp-*"))
	for _, d := range dirs {
		k := strings.TrimPrefix(filepath.Base(d), "."+profile+"-")
		k, _, _ = strings.Cut(k, ".tmp-")
		if k == key {
			if err := removeBuildDir(d); err != nil {
				return err
			}
			continue
		}
		if err := removeUnlocked(filepath.Join(root, profile+"-"+k+".lock"), d); err != nil {
			return err
		}
	}
	return nil
}

// removeUnlocked removes the build directory dir if nobody holds the lock file lock.
func removeUnlocked(lock, dir string) error {
	f, err := os.OpenFile(lock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil // not ours to judge: a builder that can open it will sweep it
	}
	defer f.Close()
	fd := int(f.Fd())
	if syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return nil // a live builder's
	}
	defer unlockFd(fd)
	return removeBuildDir(dir)
}

// unlockFd releases a flock before its file is closed, so that a child forked meanwhile, which
// holds a copy of the descriptor until its exec, cannot keep the lock. Should the unlock fail,
// closing the file releases the lock all the same: there is nothing to report.
func unlockFd(fd int) { _ = syscall.Flock(fd, syscall.LOCK_UN) }

// removeBuildDir removes a build directory after unmounting whatever a killed mmdebstrap
// left mounted inside it (proc, sys, dev bind mounts): RemoveAll must never walk into those.
func removeBuildDir(dir string) error {
	mounts, err := mountsUnder("/proc/self/mountinfo", dir)
	if err != nil {
		return err
	}
	for i := len(mounts) - 1; i >= 0; i-- { // deepest first
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s left by an earlier build: %w", mounts[i], err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove build dir: %w", err)
	}
	return nil
}

// mountsUnder lists the mount points at or below dir, sorted so parents come first.
func mountsUnder(mountinfo, dir string) ([]string, error) {
	b, err := os.ReadFile(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	dir = filepath.Clean(dir)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountField(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Strings(out)
	return out, nil
}

// unescapeMountField undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountField(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// lockFile takes an exclusive flock on path, waiting for another holder if there is one.
// The returned function releases it.
func lockFile(ctx context.Context, path string, progress io.Writer) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	fd := int(f.Fd())
	release := func() {
		unlockFd(fd)
		f.Close()
	}
	err = syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		return release, nil
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	fmt.Fprintf(progress, "image: another process is building %s; waiting for it\n", strings.TrimSuffix(filepath.Base(path), ".lock"))
	start := time.Now()
	got := make(chan error, 1)
	go func() { got <- syscall.Flock(fd, syscall.LOCK_EX) }()
	select {
	case err := <-got:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		fmt.Fprintf(progress, "image: waited %.1fs for the other build\n", time.Since(start).Seconds())
		return release, nil
	case <-ctx.Done():
		// flock cannot be interrupted: release the lock whenever the waiter gets it.
		go func() {
			if <-got == nil {
				release()
				return
			}
			f.Close()
		}()
		return nil, fmt.Errorf("wait for the image lock %s: %w", path, ctx.Err())
	}
}

// stepper prints a build's progress: a line when it starts, "<name>: [n/of] <step>" and then
// its duration for each step, and a line when it is built.
type stepper struct {
	w         io.Writer
	name, key string
	n, of     int
	start     time.Time
}

// newStepper prints "<name>: building <name>-<key> (<about>)" and returns the stepper of a
// build of of steps.
func newStepper(w io.Writer, name, key string, of int, about string) *stepper {
	fmt.Fprintf(w, "%s: building %s-%s (%s)\n", name, name, key, about)
	return &stepper{w: w, name: name, key: key, of: of, start: time.Now()}
}

func (s *stepper) do(what string, f func() (string, error)) error {
	s.n++
	fmt.Fprintf(s.w, "%s: [%d/%d] %s\n", s.name, s.n, s.of, what)
	start := time.Now()
	note, err := f()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if note != "" {
		note = ": " + note
	}
	fmt.Fprintf(s.w, "%s: [%d/%d] done in %.1fs%s\n", s.name, s.n, s.of, time.Since(start).Seconds(), note)
	return nil
}

// elapsed is the time since the build started.
func (s *stepper) elapsed() time.Duration { return time.Since(s.start) }

// built prints the build's last line.
func (s *stepper) built() {
	fmt.Fprintf(s.w, "%s: built %s-%s in %.1fs\n", s.name, s.name, s.key, s.elapsed().Seconds())
}
