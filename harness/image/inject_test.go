package image

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTiny is a Tiny whose base initramfs is arbitrary bytes of a length that needs padding.
func fakeTiny(t *testing.T, base []byte) *Tiny {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initramfs.cpio.zst")
	if err := os.WriteFile(p, base, 0o644); err != nil {
		t.Fatal(err)
	}
	return &Tiny{Dir: filepath.Dir(p), Initramfs: p}
}

// extractAppended checks the layout the kernel needs (base unchanged, zero padding to a
// 4-byte boundary, then a newc archive) and extracts that archive with GNU cpio.
func extractAppended(t *testing.T, out string, base []byte) string {
	t.Helper()
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed")
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, base) {
		t.Fatal("the output does not start with the base initramfs")
	}
	off := len(base)
	for off%4 != 0 {
		if b[off] != 0 {
			t.Fatalf("padding byte at %d is %#x, want 0", off, b[off])
		}
		off++
	}
	if !bytes.HasPrefix(b[off:], []byte("070701")) {
		t.Fatalf("no newc archive at aligned offset %d: %q", off, b[off:min(off+16, len(b))])
	}
	dir := t.TempDir()
	cmd := exec.Command(cpio, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(b[off:])
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, o)
	}
	return dir
}

func TestInjectAgentScriptAndExtras(t *testing.T) {
	base := []byte("not really zstd, 27 bytes..")
	tiny := fakeTiny(t, base)
	agent := filepath.Join(t.TempDir(), "agent")
	body := []byte("#!/bin/sh\necho agent\n")
	if err := os.WriteFile(agent, body, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd")
	conf := ExtraFile{Path: "/etc/qemu/qemu-ga.conf", Mode: 0o600, Data: []byte("[general]\nverbose=true\n")}
	if err := tiny.InjectAgentWith(context.Background(), agent, out, conf); err != nil {
		t.Fatal(err)
	}
	dir := extractAppended(t, out, base)
	got, err := os.ReadFile(filepath.Join(dir, AgentPath))
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("agent in archive: %q, %v", got, err)
	}
	if st, _ := os.Stat(filepath.Join(dir, AgentPath)); st.Mode().Perm() != 0o755 {
		t.Errorf("agent mode %v, want 0755", st.Mode())
	}
	got, err = os.ReadFile(filepath.Join(dir, conf.Path))
	if err != nil || !bytes.Equal(got, conf.Data) {
		t.Errorf("extra file: %q, %v", got, err)
	}
	// A script needs no libraries: nothing else was added.
	var files []string
	if err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !info.IsDir() {
			files = append(files, strings.TrimPrefix(p, dir))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Errorf("archive holds %v, want the agent and the config only", files)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*"))
	if len(leftovers) != 0 {
		t.Errorf("temp files left behind: %v", leftovers)
	}
}

// The reference agent goes in with every library it links, byte for byte.
func TestInjectReferenceAgentWithLibraries(t *testing.T) {
	if _, err := os.Stat(referenceAgent); err != nil {
		t.Skip("the reference agent is not installed")
	}
	base := []byte("0123456789abcdef") // already aligned: no padding at all
	tiny := fakeTiny(t, base)
	out := filepath.Join(t.TempDir(), "initrd")
	if err := tiny.InjectAgent(context.Background(), referenceAgent, out); err != nil {
		t.Fatal(err)
	}
	dir := extractAppended(t, out, base)
	libs, err := sharedLibs(referenceAgent, hostLibDirs())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range append(libs, libFile{Guest: AgentPath, Host: referenceAgent}) {
		want, err := os.ReadFile(l.Host)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, l.Guest))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s in the archive differs from %s (%d bytes, %v)", l.Guest, l.Host, len(got), err)
		}
	}
}

func TestInjectRefusesForeignBinaries(t *testing.T) {
	tiny := fakeTiny(t, []byte("base"))
	out := filepath.Join(t.TempDir(), "initrd")
	if err := tiny.InjectAgent(context.Background(), filepath.Join(t.TempDir(), "missing"), out); err == nil {
		t.Error("a missing agent was accepted")
	}
	if err := tiny.InjectAgent(context.Background(), t.TempDir(), out); err == nil {
		t.Error("a directory was accepted as the agent")
	}
	// An aarch64 ELF header: the guest is x86-64.
	arm := filepath.Join(t.TempDir(), "arm")
	hdr := make([]byte, 64)
	copy(hdr, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	hdr[16], hdr[18], hdr[20] = 2, 183, 1 // ET_EXEC, EM_AARCH64, EV_CURRENT
	hdr[52] = 64                          // e_ehsize
	if err := os.WriteFile(arm, hdr, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tiny.InjectAgent(context.Background(), arm, out); err == nil || !strings.Contains(err.Error(), "x86-64") {
		t.Errorf("aarch64 agent: err = %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused injection left %s behind", out)
	}
}
