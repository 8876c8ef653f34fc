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

// extractISO unpacks an ISO with xorriso (no mount) and returns the directory and the volume id.
func extractISO(t *testing.T, iso string) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "x")
	if o, err := exec.Command("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", dir).CombinedOutput(); err != nil {
		t.Fatalf("xorriso extract: %v\n%s", err, o)
	}
	o, err := exec.Command("xorriso", "-indev", iso, "-pvd_info").CombinedOutput()
	if err != nil {
		t.Fatalf("xorriso -pvd_info: %v\n%s", err, o)
	}
	vol := ""
	for _, l := range strings.Split(string(o), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "Volume Id" {
			vol = strings.TrimSpace(v)
		}
	}
	return dir, vol
}

// sourceConfig evaluates qgakit/config with the host's sh, as setup does in the guest.
func sourceConfig(t *testing.T, path string) string {
	t.Helper()
	o, err := exec.Command("sh", "-c", `. "$1"; printf '%s|%s|%s' "$QGAKIT_AGENT" "$QGAKIT_MOUNTS" "$QGAKIT_SWAP"`, "sh", path).CombinedOutput()
	if err != nil {
		t.Fatalf("source config: %v\n%s", err, o)
	}
	return string(o)
}

func TestWriteSeed(t *testing.T) {
	needTools(t, "xorriso")
	agent := filepath.Join(t.TempDir(), "agent")
	script := "#!/bin/sh\necho an agent that is a script\n"
	if err := os.WriteFile(agent, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(t.TempDir(), "seed.iso")
	o := SeedOptions{Agent: agent, AgentArgs: []string{"-D", "a b", "", "it's"}, Mounts: []string{"vda", "/dev/vdb"},
		Swap: "/dev/vdc", InstanceID: "qgakit-test-1"}
	if err := WriteSeed(context.Background(), iso, o); err != nil {
		t.Fatal(err)
	}
	dir, vol := extractISO(t, iso)
	if vol != SeedLabel {
		t.Errorf("volume id %q, want %q (NoCloud finds the seed by it)", vol, SeedLabel)
	}
	meta, _ := os.ReadFile(filepath.Join(dir, "meta-data"))
	for _, want := range []string{"instance-id: qgakit-test-1\n", "dsmode: local\n"} {
		if !strings.Contains(string(meta), want) {
			t.Errorf("meta-data %q lacks %q", meta, want)
		}
	}
	ud, _ := os.ReadFile(filepath.Join(dir, "user-data"))
	if !strings.HasPrefix(string(ud), "#cloud-config\n") || !strings.Contains(string(ud), "bootcmd:") ||
		!strings.Contains(string(ud), `sh "$d/qgakit/setup" "$d"`) {
		t.Errorf("user-data does not run qgakit/setup from bootcmd:\n%s", ud)
	}
	if got := sourceConfig(t, filepath.Join(dir, "qgakit/config")); got != "inject|vda vdb|vdc" {
		t.Errorf("config gives %q, want inject|vda vdb|vdc", got)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "qgakit/agent-args"))
	if string(args) != "-D\na b\n\nit's\n" {
		t.Errorf("agent-args %q", args)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "qgakit/agent"))
	if string(got) != script {
		t.Errorf("agent on the seed is %q, want the host's file", got)
	}
	for _, f := range []string{"agent", "setup", "supervisor", "console", "shutdown-hook"} {
		st, err := os.Stat(filepath.Join(dir, "qgakit", f))
		if err != nil {
			t.Errorf("seed lacks qgakit/%s: %v", f, err)
			continue
		}
		if st.Mode().Perm()&0o111 == 0 {
			t.Errorf("qgakit/%s has mode %v: Rock Ridge must keep it executable", f, st.Mode())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "qgakit/lib")); !os.IsNotExist(err) {
		t.Errorf("a script agent got a lib dir: %v", err)
	}
}

func TestWriteSeedDynamicAgentBringsItsLibrariesButNotGlibc(t *testing.T) {
	needTools(t, "xorriso")
	const ref = "/usr/sbin/qemu-ga"
	if _, err := os.Stat(ref); err != nil {
		t.Skip("the reference agent is not installed")
	}
	iso := filepath.Join(t.TempDir(), "seed.iso")
	if err := WriteSeed(context.Background(), iso, SeedOptions{Agent: ref}); err != nil {
		t.Fatal(err)
	}
	dir, _ := extractISO(t, iso)
	ents, err := os.ReadDir(filepath.Join(dir, "qgakit/lib"))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, e := range ents {
		have[e.Name()] = true
	}
	if !have["libglib-2.0.so.0"] {
		t.Errorf("qgakit/lib lacks libglib-2.0.so.0 (qemu-ga links it): %v", have)
	}
	for _, g := range []string{"libc.so.6", "ld-linux-x86-64.so.2", "libm.so.6"} {
		if have[g] {
			t.Errorf("qgakit/lib holds %s: the guest's glibc must stay in charge", g)
		}
	}
}

func TestWriteSeedImageAgent(t *testing.T) {
	needTools(t, "xorriso")
	iso := filepath.Join(t.TempDir(), "seed.iso")
	if err := WriteSeed(context.Background(), iso, SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	dir, _ := extractISO(t, iso)
	if got := sourceConfig(t, filepath.Join(dir, "qgakit/config")); got != "image||" {
		t.Errorf("config gives %q, want image||", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "qgakit/agent")); !os.IsNotExist(err) {
		t.Errorf("AGENT=image seed carries an agent: %v", err)
	}
}

func TestWriteSeedRefusesWhatCannotTravel(t *testing.T) {
	out := filepath.Join(t.TempDir(), "seed.iso")
	for _, o := range []SeedOptions{
		{AgentArgs: []string{"a\nb"}},
		{Mounts: []string{"vdb; reboot"}},
		{Swap: "../sda"},
	} {
		if err := WriteSeed(context.Background(), out, o); err == nil {
			t.Errorf("WriteSeed(%+v) succeeded", o)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused seed left %s", out)
	}
}

// TestSupervisorRunsAgentWithArgs runs the seed's supervisor on the host with a fake agent
// that records its arguments and then ends the supervisor: arguments with spaces, quotes and
// empty ones arrive exactly, after the fixed ones, and the start is logged.
func TestSupervisorRunsAgentWithArgs(t *testing.T) {
	dir := t.TempDir()
	sup, err := seedFS().(interface{ ReadFile(string) ([]byte, error) }).ReadFile("supervisor")
	if err != nil {
		t.Fatal(err)
	}
	supPath := filepath.Join(dir, "supervisor")
	if err := os.WriteFile(supPath, sup, 0o755); err != nil {
		t.Fatal(err)
	}
	port := filepath.Join(dir, "port")
	if err := os.WriteFile(port, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(dir, "got")
	agent := filepath.Join(dir, "agent")
	// Each argument NUL-terminated; then the supervisor (the parent) is ended, so the test needs
	// no waiting loop.
	fake := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > " + got + "\nkill $PPID\n"
	if err := os.WriteFile(agent, []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"-D", "a b", "", `it's "q"`, "$HOME"}
	argsFile := filepath.Join(dir, "args")
	if err := os.WriteFile(argsFile, agentArgsFile(args), 0o644); err != nil {
		t.Fatal(err)
	}
	tty := filepath.Join(dir, "tty")
	cmd := exec.Command("sh", supPath, agent, argsFile)
	cmd.Env = append(os.Environ(), "QGAKIT_PORT="+port, "QGAKIT_TTY="+tty, "QGAKIT_LOGDIR="+dir)
	out, _ := cmd.CombinedOutput() // ends by SIGTERM from the fake agent
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatalf("the agent did not run: %v\n%s", err, out)
	}
	want := append([]string{"-m", "virtio-serial", "-p", port, "-l", filepath.Join(dir, "qga.log")}, args...)
	have := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if strings.Join(have, "|") != strings.Join(want, "|") || len(have) != len(want) {
		t.Errorf("agent got %q, want %q", have, want)
	}
	if log, _ := os.ReadFile(tty); !bytes.Contains(log, []byte("QGAKIT: agent-start\n")) {
		t.Errorf("tty log %q lacks the agent-start line", log)
	}
}
