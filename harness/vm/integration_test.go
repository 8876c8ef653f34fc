//go:build vmtest

package vm

// The integration test boots the tiny image (harness/image) with an agent injected:
//
//	go test -tags vmtest -run Integration -v ./harness/vm/
//
// The agent is $AGENT when set, else the reference /usr/sbin/qemu-ga.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/qmp"
)

func TestIntegrationTinyBoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tiny, initrd := tinyWithAgent(t, ctx, testAgent())

	root := t.TempDir()
	const mac = "52:54:00:12:34:56"
	start := time.Now()
	v := StartT(t, ctx,
		WithTempRoot(root),
		WithKernel(tiny.Kernel, initrd, tiny.Cmdline(image.TinyOptions{})),
		WithNIC(NIC{MAC: mac}),
	)
	if _, err := v.WaitSerial(ctx, "TINY: READY"); err != nil {
		t.Fatal(err)
	}
	t.Logf("READY %v after start", time.Since(start).Round(time.Millisecond))

	con := v.Console()
	out, err := con.RunOK(ctx, "cat /sys/class/net/eth0/address; uname -r")
	if want := mac + "\n" + tiny.KernelVersion + "\n"; err != nil || out != want {
		t.Errorf("console: %q, %v; want %q", out, err, want)
	}
	if out, rc, err := con.Run(ctx, "echo to-stderr >&2; exit 4"); err != nil || out != "to-stderr\n" || rc != 4 {
		t.Errorf("console stderr/status: %q, %d, %v", out, rc, err)
	}

	c, err := v.AttachAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent answering %v after start", time.Since(start).Round(time.Millisecond))
	if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	var info struct {
		Version string `json:"version"`
	}
	if err := c.Call(ctx, "guest-info", nil, &info); err != nil || info.Version == "" {
		t.Errorf("guest-info: %+v, %v", info, err)
	}
	var qe *qga.Error
	if err := c.Call(ctx, "guest-nope", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command through the guest: %v", err)
	}
	// The agent really runs in the guest: the console sees its process.
	if out, err := con.RunOK(ctx, "ps | grep -c '[o]pt/qga/agent'"); err != nil || strings.TrimSpace(out) == "0" {
		t.Errorf("agent process in the guest: %q, %v", out, err)
	}

	if err := v.DetachAgent(ctx); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if v.Agent() != nil {
		t.Error("Agent() after DetachAgent")
	}
	// The reference exits when its port goes away; the supervisor restarts it.
	if _, err := v.WaitSerial(ctx, "TINY: agent-exit"); err != nil {
		t.Errorf("agent did not exit on unplug: %v", err)
	}
	c, err = v.AttachAgent(ctx)
	if err != nil {
		t.Fatalf("re-attach: %v", err)
	}
	if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatalf("guest-ping after re-attach: %v", err)
	}

	// A guest power-off through the agent: no reply, SHUTDOWN{guest: true}, QEMU exits 0.
	mark := v.QMP().Mark()
	if err := c.CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "powerdown"}, 0); err != nil {
		t.Fatalf("guest-shutdown: %v", err)
	}
	ev, err := v.QMP().WaitEventAfter(ctx, mark, "SHUTDOWN", func(e qmp.Event) bool { return e.Bool("guest") })
	if err != nil {
		t.Fatalf("no guest SHUTDOWN: %v", err)
	}
	t.Logf("SHUTDOWN %s", ev.Raw)
	st, err := v.Wait(ctx)
	if err != nil || st.ExitCode() != 0 {
		t.Errorf("QEMU after guest power-off: %v, %v", st, err)
	}
	if _, err := v.WaitSerial(ctx, "TINY: shutdown poweroff"); err != nil {
		t.Errorf("no shutdown line on ttyS0: %v", err)
	}

	dir, pid := v.Dir(), v.Pid()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind", dir)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "*")); len(left) != 0 {
		t.Errorf("left in the temp root: %v", left)
	}
	if processAlive(pid) {
		t.Errorf("QEMU %d still alive", pid)
	}
	if Live() != 0 {
		t.Errorf("Live() = %d", Live())
	}
	art := filepath.Join(t.TempDir(), "art")
	if err := v.Artifacts(art); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(art, "qga.log")); !strings.Contains(string(b), "=== agent connection 2") ||
		!strings.Contains(string(b), "guest-shutdown") {
		t.Errorf("qga.log lacks the two connections:\n%s", b)
	}
	if b, _ := os.ReadFile(filepath.Join(art, "serial0.log")); !strings.Contains(string(b), "TINY: READY") {
		t.Errorf("serial0.log lacks READY")
	}
}

// testAgent is the agent the VM tests inject: $AGENT when set, else the reference.
func testAgent() string {
	if a := os.Getenv("AGENT"); a != "" {
		return a
	}
	return "/usr/sbin/qemu-ga"
}

// tinyWithAgent builds (or finds in the cache) the tiny image and returns it with an initramfs
// that carries agent.
func tinyWithAgent(t *testing.T, ctx context.Context, agent string) (*image.Tiny, string) {
	t.Helper()
	tiny, err := image.BuildTiny(ctx, testWriter{t})
	if err != nil {
		t.Fatalf("build the tiny image: %v", err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd.zst")
	if err := tiny.InjectAgent(ctx, agent, initrd); err != nil {
		t.Fatalf("inject %s: %v", agent, err)
	}
	return tiny, initrd
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
