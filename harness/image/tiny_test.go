package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/qgakit/qgakit/images"
)

func baseInputs() tinyInputs {
	return tinyInputs{
		Format: tinyFormat,
		Kernel: debPackage{Name: "linux-image-6.1.0-56-cloud-amd64", Version: "6.1.192-2"},
		Busybox: busyboxSource{Package: debPackage{Name: "busybox-static", Version: "1:1.35.0-4"},
			Path: "/bin/busybox", SHA256: "aa"},
		Files: map[string]string{"tiny/rootfs/init": "11", "tiny/modules.conf": "22"},
	}
}

// The key is a pure function of the inputs, and each input moves it.
func TestCacheKeyCoversEveryInput(t *testing.T) {
	base := baseInputs()
	k := base.key()
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(k) {
		t.Fatalf("key %q is not 16 hex digits", k)
	}
	if again := baseInputs().key(); again != k {
		t.Fatalf("same inputs, different keys: %s %s", k, again)
	}
	mutations := map[string]func(*tinyInputs){
		"format":          func(in *tinyInputs) { in.Format = "tiny/999" },
		"kernel version":  func(in *tinyInputs) { in.Kernel.Version = "6.1.193-1" },
		"kernel package":  func(in *tinyInputs) { in.Kernel.Name = "linux-image-6.1.0-57-cloud-amd64" },
		"busybox version": func(in *tinyInputs) { in.Busybox.Package.Version = "1:1.36.1-1" },
		"busybox binary":  func(in *tinyInputs) { in.Busybox.SHA256 = "bb" },
		"busybox source":  func(in *tinyInputs) { in.Busybox.Path = "" },
		"file contents":   func(in *tinyInputs) { in.Files["tiny/rootfs/init"] = "12" },
		"file added": func(in *tinyInputs) {
			in.Files["tiny/rootfs/etc/new"] = "33"
		},
	}
	for name, mutate := range mutations {
		in := baseInputs()
		mutate(&in)
		if in.key() == k {
			t.Errorf("changing the %s kept key %s", name, k)
		}
	}
}

func TestHashFilesSeesContentsAndNames(t *testing.T) {
	a := fstest.MapFS{"tiny/rootfs/init": {Data: []byte("#!/bin/sh\n")}, "tiny/links": {Data: []byte("x y\n")}}
	b := fstest.MapFS{"tiny/rootfs/init": {Data: []byte("#!/bin/sh \n")}, "tiny/links": {Data: []byte("x y\n")}}
	ha, err := hashFiles(a)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := hashFiles(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(ha) != 2 || ha["tiny/links"] != hb["tiny/links"] || ha["tiny/rootfs/init"] == hb["tiny/rootfs/init"] {
		t.Errorf("hashes: %v vs %v", ha, hb)
	}
	// The real embedded tree: /init and its helpers are part of the key.
	h, err := hashFiles(images.Tiny)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"tiny/rootfs/init", "tiny/rootfs/lib/tiny/supervisor", "tiny/rootfs/sbin/shutdown", "tiny/modules.conf", "tiny/links"} {
		if h[p] == "" {
			t.Errorf("embedded file %s is not hashed (have %v)", p, sortedStrings(h))
		}
	}
}

func TestKernelFromMeta(t *testing.T) {
	k, err := kernelFromMeta("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)")
	if err != nil || k != (debPackage{"linux-image-6.1.0-56-cloud-amd64", "6.1.192-2"}) {
		t.Errorf("got %v, %v", k, err)
	}
	k, err = kernelFromMeta("initramfs-tools | linux-initramfs-tool, linux-image-6.12.9-cloud-amd64 (= 6.12.9-1)")
	if err != nil || k.Name != "linux-image-6.12.9-cloud-amd64" || k.Version != "6.12.9-1" {
		t.Errorf("got %v, %v", k, err)
	}
	if _, err := kernelFromMeta("linux-image-6.1.0-56-cloud-amd64 (>= 6.1)"); err == nil {
		t.Error("a non-exact dependency was accepted")
	}
}

func TestCmdline(t *testing.T) {
	tiny := &Tiny{}
	plain := tiny.Cmdline(TinyOptions{})
	for _, want := range []string{"console=ttyS0", "8250.nr_uarts=2", "quiet"} {
		if !slices.Contains(strings.Fields(plain), want) {
			t.Errorf("%q lacks %s", plain, want)
		}
	}
	if strings.Contains(plain, "qga.args") || strings.Contains(plain, "tiny.") || strings.Contains(plain, "resume=") {
		t.Errorf("options appear without being asked for: %q", plain)
	}
	full := strings.Fields(tiny.Cmdline(TinyOptions{
		Mounts: []string{"vdb", "/dev/vdc"}, Swap: "/dev/vdd", Resume: "vdd",
		Extra: []string{"8250.nr_uarts=4", "loglevel=7"},
	}))
	for _, want := range []string{"tiny.mnt=vdb,vdc", "tiny.swap=vdd", "resume=/dev/vdd"} {
		if !slices.Contains(full, want) {
			t.Errorf("%q lacks %s", full, want)
		}
	}
	// Extra comes last, so it overrides a default (the kernel takes the last value).
	if full[len(full)-2] != "8250.nr_uarts=4" || full[len(full)-1] != "loglevel=7" {
		t.Errorf("extra arguments are not last: %q", full)
	}
}

// The agent's arguments survive the trip through the kernel command line and the guest's
// own shell decoding (the embedded lib/tiny/common run by the host's busybox).
func TestAgentArgsRoundTripThroughGuestShell(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed")
	}
	args := []string{"-v", "--blacklist=guest-ping,guest-info", "-n", "with space", `q"uote`, "100%", "%2C literally", "-e"}
	cmdline := (&Tiny{}).Cmdline(TinyOptions{AgentArgs: args, Extra: []string{"after=1"}})
	if n := strings.Count(cmdline, "qga.args="); n != 1 {
		t.Fatalf("cmdline %q has %d qga.args", cmdline, n)
	}
	for _, field := range strings.Fields(cmdline) {
		if strings.HasPrefix(field, "qga.args=") && strings.ContainsAny(field, "\" ") {
			t.Fatalf("qga.args carries a space or quote: %q", field)
		}
	}
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "cmdline"), []byte(cmdline+"\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "common"), mustReadEmbedded(t, "tiny/rootfs/lib/tiny/common"), 0o644))
	cmd := exec.Command(busybox, "sh", "-c", `. ./common; agent_args; echo "after=$(arg after)"`)
	cmd.Dir = dir
	cmd.Env = []string{"TINY_CMDLINE=" + filepath.Join(dir, "cmdline")}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := strings.Join(append(args, "after=1"), "\n") + "\n"
	if string(out) != want {
		t.Errorf("decoded in the guest's shell:\n%s\nwant:\n%s", out, want)
	}
}

func TestReadTSCkHz(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "cpuinfo")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	info := "processor\t: 0\ncpu MHz\t\t: 2445.406\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n"
	if got := readTSCkHz(write(info)); got != 2445406 {
		t.Errorf("constant TSC: got %d kHz, want 2445406", got)
	}
	if got := readTSCkHz(write(strings.ReplaceAll(info, " constant_tsc", ""))); got != 0 {
		t.Errorf("no constant_tsc: got %d, want 0 (unknown)", got)
	}
	if got := readTSCkHz(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("no cpuinfo: got %d", got)
	}
}
