package image

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeImage is a cache entry of the profile "fake": a manifest and one file, enough to test
// the cache's machinery without apt or a kernel.
type fakeImage struct {
	Dir   string
	Value string
}

type fakeManifest struct {
	Format string `json:"format"`
	Value  string `json:"value"`
}

const fakeFormat = "fake/1"

func loadFake(dir string) (*fakeImage, error) {
	var m fakeManifest
	if err := loadManifest(dir, "fake", fakeFormat, &m, filepath.Join(dir, "img")); err != nil {
		return nil, err
	}
	return &fakeImage{Dir: dir, Value: m.Value}, nil
}

// buildFake writes a complete fake image with value into out.
func buildFake(out, value string) error {
	if err := os.WriteFile(filepath.Join(out, "img"), []byte(value), 0o644); err != nil {
		return err
	}
	return writeManifest(out, fakeManifest{Format: fakeFormat, Value: value})
}

func tempDirs(t *testing.T, root string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(root, ".*.tmp-*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

func TestLoadManifest(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadFake(dir); err == nil || !strings.Contains(err.Error(), "read fake manifest") {
		t.Errorf("no manifest: %v", err)
	}
	if err := writeManifest(dir, fakeManifest{Format: "fake/0", Value: "v"}); err != nil {
		t.Fatal(err)
	}
	if _, err := loadFake(dir); err == nil || !strings.Contains(err.Error(), `has format "fake/0", want "fake/1"`) {
		t.Errorf("old format: %v", err)
	}
	if err := writeManifest(dir, fakeManifest{Format: fakeFormat, Value: "v"}); err != nil {
		t.Fatal(err)
	}
	if _, err := loadFake(dir); err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "fake image incomplete") {
		t.Errorf("manifest without its file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := loadFake(dir)
	if err != nil || img.Value != "v" {
		t.Errorf("complete image: %+v, %v", img, err)
	}
	if err := os.WriteFile(filepath.Join(dir, manifestFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadFake(dir); err == nil || !strings.Contains(err.Error(), "parse ") {
		t.Errorf("broken manifest: %v", err)
	}
}

// Two builders of one key: the first builds while the second waits on the lock, and then the
// second loads the first one's image instead of building it again.
func TestBuildCachedOneBuilderAtATime(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	var builds atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	build := func(tmp string) error {
		if builds.Add(1) == 1 {
			close(started)
		}
		<-release
		return buildFake(tmp, "built")
	}
	type result struct {
		img *fakeImage
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() {
		img, err := buildCached(ctx, root, "fake", "k1", io.Discard, loadFake, build)
		first <- result{img, err}
	}()
	<-started
	progress := make(progressPipe, 10)
	go func() {
		img, err := buildCached(ctx, root, "fake", "k1", progress, loadFake, build)
		second <- result{img, err}
	}()
	if msg := <-progress; !strings.Contains(msg, "another process is building fake-k1") {
		t.Fatalf("progress = %q, want the second builder to wait", msg)
	}
	close(release)
	a, b := <-first, <-second
	if a.err != nil || b.err != nil {
		t.Fatalf("builders: %v, %v", a.err, b.err)
	}
	want := filepath.Join(root, "fake-k1")
	if a.img.Dir != want || b.img.Dir != want || a.img.Value != "built" || b.img.Value != "built" {
		t.Errorf("images %+v and %+v, want both in %s", a.img, b.img, want)
	}
	if n := builds.Load(); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}
	if st, err := os.Stat(want); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("image dir: %v, %v; want mode 0755 (not MkdirTemp's 0700)", st, err)
	}
	if d := tempDirs(t, root); len(d) != 0 {
		t.Errorf("temp dirs left: %v", d)
	}
	// A later call is a cache hit.
	img, err := buildCached(ctx, root, "fake", "k1", io.Discard, loadFake, func(string) error {
		return errors.New("built again")
	})
	if err != nil || img.Value != "built" {
		t.Errorf("cached call: %+v, %v", img, err)
	}
}

func TestBuildCachedFailureLeavesNothing(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	boom := errors.New("boom")
	_, err := buildCached(ctx, root, "fake", "k1", io.Discard, loadFake, func(tmp string) error {
		if err := buildFake(tmp, "half"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the build's", err)
	}
	if _, err := os.Stat(filepath.Join(root, "fake-k1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed build installed an image: %v", err)
	}
	if d := tempDirs(t, root); len(d) != 0 {
		t.Errorf("temp dirs left: %v", d)
	}
}

// A leftover that load refuses (an older format, say) is replaced, and a killed builder's temp
// dir of the same key is swept.
func TestBuildCachedReplacesLeftovers(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"fake-k1/manifest.json":    `{"format": "fake/0"}`,
		"fake-k1/old":              "",
		".fake-k1.tmp-dead/partly": "",
	})
	img, err := buildCached(context.Background(), root, "fake", "k1", io.Discard, loadFake, func(tmp string) error {
		return buildFake(tmp, "new")
	})
	if err != nil || img.Value != "new" {
		t.Fatalf("build: %+v, %v", img, err)
	}
	if _, err := os.Stat(filepath.Join(root, "fake-k1/old")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old image's files survived: %v", err)
	}
	if d := tempDirs(t, root); len(d) != 0 {
		t.Errorf("temp dirs left: %v", d)
	}
}

func TestBuiltImagesRemembersPerRoot(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	var b builtImages[*fakeImage]
	calls := 0
	fail := true
	build := func(_ context.Context, root string, progress io.Writer) (*fakeImage, error) {
		calls++
		if progress == nil {
			t.Error("build got a nil progress writer")
		}
		if st, err := os.Stat(root); err != nil || !st.IsDir() {
			t.Errorf("build got a cache root that does not exist: %v", err)
		}
		if fail {
			return nil, errors.New("no apt")
		}
		return &fakeImage{Dir: root}, nil
	}
	ctx := context.Background()
	if _, err := b.get(ctx, nil, build); err == nil {
		t.Fatal("a failed build succeeded")
	}
	fail = false
	one, err := b.get(ctx, nil, build)
	if err != nil {
		t.Fatal(err)
	}
	two, err := b.get(ctx, nil, build)
	if err != nil || two != one {
		t.Errorf("second call: %+v, %v; want the first's image", two, err)
	}
	if calls != 2 {
		t.Errorf("%d builds, want 2: a failure is not remembered, a success is", calls)
	}
	// Another cache root is another cache.
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	if three, err := b.get(ctx, nil, build); err != nil || three == one || calls != 3 {
		t.Errorf("new cache root: %+v, %v after %d builds; want a build of its own", three, err, calls)
	}
}

func TestStepperLines(t *testing.T) {
	var out strings.Builder
	s := newStepper(&out, "fake", "k1", 2, "about it")
	if err := s.do("first", func() (string, error) { return "a note", nil }); err != nil {
		t.Fatal(err)
	}
	err := s.do("second", func() (string, error) { return "", errors.New("broke") })
	if err == nil || err.Error() != "second: broke" {
		t.Errorf("failed step: %v, want the step's name on the error", err)
	}
	s.built()
	// Durations vary: keep the shape of each line.
	got := strings.Split(strings.TrimSuffix(regexp.MustCompile(` in \d+\.\ds`).ReplaceAllString(out.String(), " in <t>"), "\n"), "\n")
	want := []string{
		"fake: building fake-k1 (about it)",
		"fake: [1/2] first",
		"fake: [1/2] done in <t>: a note",
		"fake: [2/2] second",
		"fake: built fake-k1 in <t>",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("progress:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// progressPipe lets a test wait for a line of progress output instead of sleeping.
type progressPipe chan string

func (p progressPipe) Write(b []byte) (int, error) {
	p <- string(b)
	return len(b), nil
}

func TestLockFileWaitsForTheHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	ctx := context.Background()
	unlockA, err := lockFile(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var released atomic.Bool
	progress := make(progressPipe, 10)
	done := make(chan error, 1)
	go func() {
		unlockB, err := lockFile(ctx, path, progress)
		if err == nil {
			if !released.Load() {
				err = errors.New("B got the lock while A held it")
			}
			unlockB()
		}
		done <- err
	}()
	if msg := <-progress; !strings.Contains(msg, "waiting") {
		t.Fatalf("progress = %q, want a waiting notice", msg)
	}
	released.Store(true)
	unlockA()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLockFileGivesUpOnCancel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlockA, err := lockFile(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	progress := make(progressPipe, 10)
	done := make(chan error, 1)
	go func() {
		_, err := lockFile(ctx, path, progress)
		done <- err
	}()
	<-progress // B is waiting
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: err = %v", err)
	}
	unlockA()
	// The abandoned waiter gets the lock in the background and must let it go again.
	unlockC, err := lockFile(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	unlockC()
}

func TestMountsUnder(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	writeFiles(t, filepath.Dir(mi), map[string]string{"mountinfo": strings.Join([]string{
		"22 1 0:21 / /proc rw - proc proc rw",
		"40 30 0:5 / /build/root/dev rw - devtmpfs udev rw",
		"41 30 0:21 / /build/root/proc rw - proc proc rw",
		"42 30 0:22 / /build/root2/sys rw - sysfs sysfs rw",
		"43 30 0:23 / /build/root/with\\040space rw - tmpfs t rw",
		"44 30 0:24 / /build/root rw - tmpfs t rw",
	}, "\n")})
	got, err := mountsUnder(mi, "/build/root/")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/build/root", "/build/root/dev", "/build/root/proc", "/build/root/with space"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q (not /build/root2, parents first)", got, want)
	}
}

func TestSweepStaleBuilds(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{".debian-cloud-aaaa.tmp-1/rootfs/etc", ".debian-cloud-bbbb.tmp-2/x", ".debian-cloud-cccc.tmp-3/y", "debian-cloud-dddd/keep", ".tiny-aaaa.tmp-4/z"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A live builder of cccc holds its lock: its temp dir must survive.
	unlock, err := lockFile(context.Background(), filepath.Join(root, "debian-cloud-cccc.lock"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := sweepStaleBuilds(root, "debian-cloud", "aaaa"); err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string]bool{".debian-cloud-aaaa.tmp-1": false, ".debian-cloud-bbbb.tmp-2": false,
		".debian-cloud-cccc.tmp-3": true, "debian-cloud-dddd": true,
		// Another profile's temp dir, though of the same key and with a free lock: a tiny
		// build sweeps it.
		".tiny-aaaa.tmp-4": true} {
		_, err := os.Stat(filepath.Join(root, d))
		if (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", d, err == nil, want)
		}
	}
}
