package image

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qgakit/qgakit/images"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, s := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHostAptSources(t *testing.T) {
	etc := t.TempDir()
	writeFiles(t, etc, map[string]string{
		"sources.list":                    "# only comments here\n#deb http://example.invalid/debian bookworm main\n",
		"sources.list.d/b.sources":        "Types: deb\nURIs: http://example.invalid/debian\nSuites: bookworm\nComponents: main\n",
		"sources.list.d/a.list":           "deb http://example.invalid/extra bookworm main\n",
		"sources.list.d/off.sources":      "Types: deb\nEnabled: no\nURIs: http://example.invalid/x\n",
		"sources.list.d/x.list.disabled":  "deb http://example.invalid/y bookworm main\n",
		"sources.list.d/c.list.save.list": "",
	})
	got, err := hostAptSources(etc)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(etc, "sources.list.d/a.list"), filepath.Join(etc, "sources.list.d/b.sources")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("sources %q, want %q (active entries only, in apt's order)", got, want)
	}
	if _, err := hostAptSources(t.TempDir()); err == nil {
		t.Error("no sources at all was accepted")
	}
}

func TestHostAptOptions(t *testing.T) {
	etc := t.TempDir()
	writeFiles(t, etc, map[string]string{
		"apt.conf.d/01proxy":       "Acquire::http::Proxy \"http://proxy.invalid:3128\";\n",
		"apt.conf.d/02snapshot":    "Acquire::Check-Valid-Until \"false\";\n",
		"apt.conf.d/docker-clean":  "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb\"; };\n",
		"apt.conf.d/norecommends":  "APT::Install-Recommends \"true\";\n",
		"apt.conf.d/03nested":      "Acquire { https { Proxy \"http://p.invalid\"; }; };\n",
		"apt.conf.d/04maxvalidity": "Acquire::Max-ValidTime \"86400\";\n",
	})
	got, err := hostAptOptions(etc)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range got {
		names = append(names, filepath.Base(g))
	}
	if want := []string{"01proxy", "02snapshot", "03nested"}; !reflect.DeepEqual(names, want) {
		t.Errorf("options %q, want %q: how to reach and judge the archive, nothing that changes the image", names, want)
	}
}

func TestParseSimulatedInstalls(t *testing.T) {
	out := []byte(`NOTE: This is only a simulation!
Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])
Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
Inst udev [252.1-1] (252.39-1~deb12u1 Debian-Security:12/oldstable-security [amd64])
Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])
`)
	got := parseSimulatedInstalls(out)
	want := []string{"gcc-12-base=12.2.0-14+deb12u1", "libc6=2.36-9+deb12u14", "udev=252.39-1~deb12u1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParsePackageList(t *testing.T) {
	got := parsePackageList([]byte("# comment\n\nsystemd-sysv\n  udev # the device manager\n"))
	if want := []string{"systemd-sysv", "udev"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	// The recipe itself parses to the packages the brief asks for.
	pkgs, err := recipePackages()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, p := range pkgs {
		have[p] = true
	}
	for _, p := range []string{"systemd-sysv", "udev", "cloud-init", "linux-image-cloud-amd64", "qemu-guest-agent",
		"e2fsprogs", "xfsprogs", "util-linux", "iproute2"} {
		if !have[p] {
			t.Errorf("recipe lacks %s", p)
		}
	}
}

func TestHostRelease(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a": "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n",
		"b": "NAME=x\nVERSION_CODENAME=\"trixie\"\n",
		"c": "NAME=x\n",
	})
	for f, want := range map[string]string{"a": "bookworm", "b": "trixie", "c": ""} {
		got, err := hostRelease(filepath.Join(dir, f))
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%s: %q, %v; want %q", f, got, err, want)
		}
	}
}

func TestCloudCacheKeyCoversEveryInput(t *testing.T) {
	base := cloudInputs{Format: cloudFormat, Release: "bookworm", Packages: []string{"a=1"},
		Sources: map[string]string{"/etc/apt/s": "1"}, AptOptions: map[string]string{}, Files: map[string]string{"f": "1"}}
	k := base.key()
	variants := []func(*cloudInputs){
		func(in *cloudInputs) { in.Format = "debian-cloud/0" },
		func(in *cloudInputs) { in.Release = "trixie" },
		func(in *cloudInputs) { in.Packages = []string{"a=2"} },
		func(in *cloudInputs) { in.Sources = map[string]string{"/etc/apt/s": "2"} },
		func(in *cloudInputs) { in.AptOptions = map[string]string{"/etc/apt/o": "1"} },
		func(in *cloudInputs) { in.Files = map[string]string{"f": "2"} },
	}
	for i, v := range variants {
		in := base
		v(&in)
		if in.key() == k {
			t.Errorf("variant %d does not change the key", i)
		}
	}
}

// The seed's scripts are not part of the image: editing one must not rebuild it (they travel
// in each seed), while every other recipe file is.
func TestCloudRecipeFilesInKey(t *testing.T) {
	files, err := recipeHashes()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"debian-cloud/packages", "debian-cloud/customize", "debian-cloud/rootfs/etc/fstab"} {
		if files[want] == "" {
			t.Errorf("the key does not cover %s", want)
		}
	}
	for p := range files {
		if strings.Contains(p, "/seed/") {
			t.Errorf("the key covers %s, a seed script", p)
		}
	}
}

func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

func TestSeedScriptsParse(t *testing.T) {
	for _, f := range []string{"setup", "supervisor", "console", "shutdown-hook"} {
		b, err := images.DebianCloud.ReadFile("debian-cloud/seed/" + f)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), f)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if o, err := execCommand("sh", "-n", p); err != nil {
			t.Errorf("%s: sh -n: %v\n%s", f, err, o)
		}
	}
	b, _ := images.DebianCloud.ReadFile("debian-cloud/customize")
	p := filepath.Join(t.TempDir(), "customize")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if o, err := execCommand("sh", "-n", p); err != nil {
		t.Errorf("customize: sh -n: %v\n%s", err, o)
	}
}

func TestRunStreaming(t *testing.T) {
	var progress strings.Builder
	err := runStreaming(context.Background(), &progress, "pfx: ", "sh", "-c", "echo one; echo two >&2; exit 3")
	if err == nil {
		t.Fatal("a failing tool succeeded")
	}
	for _, want := range []string{"exit status 3", "one", "two"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q: it must carry the tool's last lines", err, want)
		}
	}
	if !strings.Contains(progress.String(), "pfx: [") || !strings.Contains(progress.String(), "] two\n") {
		t.Errorf("progress %q: want each line with the prefix and a time", progress.String())
	}
	if err := runStreaming(context.Background(), io.Discard, "", "sh", "-c", "true"); err != nil {
		t.Errorf("a succeeding tool: %v", err)
	}
}
