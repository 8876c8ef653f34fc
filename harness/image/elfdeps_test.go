package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const referenceAgent = "/usr/sbin/qemu-ga"

// lddNames runs the host's loader in trace mode (ldd), an independent implementation of the
// same search, and returns the basenames of what it maps.
func lddNames(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		t.Skipf("ldd %s: %v", bin, err)
	}
	var names []string
	re := regexp.MustCompile(`^\s*(\S+)(?:\s+=>\s+(\S+))?`)
	for _, l := range strings.Split(string(out), "\n") {
		m := re.FindStringSubmatch(l)
		if m == nil || strings.HasPrefix(m[1], "linux-vdso") {
			continue
		}
		names = append(names, filepath.Base(m[1]))
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// The libraries found for the reference agent are exactly the ones the host's loader maps,
// plus nothing: a missing one would make the injected qemu-ga fail to start in the guest.
func TestSharedLibsMatchLdd(t *testing.T) {
	if _, err := os.Stat(referenceAgent); err != nil {
		t.Skip("the reference agent is not installed")
	}
	libs, err := sharedLibs(referenceAgent, hostLibDirs())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range libs {
		got = append(got, filepath.Base(l.Guest))
		if l.Guest != l.Host || !filepath.IsAbs(l.Guest) {
			t.Errorf("library %+v: want the same absolute path in the guest as on the host", l)
		}
		if st, err := os.Stat(l.Host); err != nil || !st.Mode().IsRegular() {
			t.Errorf("library %s: %v", l.Host, err)
		}
	}
	slices.Sort(got)
	if want := lddNames(t, referenceAgent); !slices.Equal(got, want) {
		t.Errorf("resolved %v\nldd maps %v", got, want)
	}
	if !slices.ContainsFunc(libs, func(l libFile) bool { return l.Guest == "/lib64/ld-linux-x86-64.so.2" }) {
		t.Errorf("the ELF interpreter is missing from %v", libs)
	}
}

func TestSharedLibsStaticAndScripts(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "agent.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if libs, err := sharedLibs(script, hostLibDirs()); err != nil || len(libs) != 0 {
		t.Errorf("script: %v, %v", libs, err)
	}
	if bb, err := exec.LookPath("busybox"); err == nil {
		if static, err := elfIsStatic(bb); err != nil || !static {
			t.Skipf("%s is not static busybox", bb)
		}
		if libs, err := sharedLibs(bb, hostLibDirs()); err != nil || len(libs) != 0 {
			t.Errorf("static busybox: %v, %v", libs, err)
		}
	}
}

func TestSharedLibsReportsWhatIsMissing(t *testing.T) {
	if _, err := os.Stat(referenceAgent); err != nil {
		t.Skip("the reference agent is not installed")
	}
	_, err := sharedLibs(referenceAgent, []string{t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), ".so") || !strings.Contains(err.Error(), "not found") {
		t.Errorf("err = %v, want the missing library named", err)
	}
	if static, err := elfIsStatic(referenceAgent); err != nil || static {
		t.Errorf("elfIsStatic(qemu-ga) = %v, %v; want false", static, err)
	}
}

func TestReadLdSoConf(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "ld.so.conf.d"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "ld.so.conf"), []byte("# top\ninclude ld.so.conf.d/*.conf\n/opt/first\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "ld.so.conf.d/b.conf"), []byte("/usr/b # trailing comment\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "ld.so.conf.d/a.conf"), []byte("/usr/a\n\nrelative/ignored\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "ld.so.conf.d/loop.conf"), []byte("include "+filepath.Join(dir, "ld.so.conf")+"\n"), 0o644))
	got := readLdSoConf(filepath.Join(dir, "ld.so.conf"), 0)
	// a.conf and b.conf in glob order; the include loop is cut off rather than recursing
	// forever, so /opt/first repeats a bounded number of times.
	if len(got) < 3 || got[0] != "/usr/a" || got[1] != "/usr/b" || got[len(got)-1] != "/opt/first" {
		t.Errorf("dirs = %v", got)
	}
}
