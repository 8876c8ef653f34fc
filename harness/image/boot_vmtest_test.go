//go:build vmtest

package image

// Boot tests of the tiny image under QEMU TCG: go test -tags vmtest ./harness/image/
// AGENT=/path/to/agent replaces the small static Go stand-in of the hot-plug test.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	tinyOnce  sync.Once
	tinyBuilt *Tiny
	tinyErr   error
)

type logWriter struct{ t testing.TB }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func buildForTest(t testing.TB) *Tiny {
	t.Helper()
	tinyOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		tinyBuilt, tinyErr = BuildTiny(ctx, logWriter{t})
	})
	if tinyErr != nil {
		t.Fatal(tinyErr)
	}
	return tinyBuilt
}

// staticAgent is $AGENT, or a small static Go program that answers guest-sync-delimited.
func staticAgent(t testing.TB) string {
	t.Helper()
	if a := os.Getenv("AGENT"); a != "" {
		return a
	}
	out := filepath.Join(t.TempDir(), "miniagent")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/miniagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in agent: %v\n%s", err, o)
	}
	if static, err := elfIsStatic(out); err != nil || !static {
		t.Fatalf("the stand-in agent is not static: %v", err)
	}
	return out
}

func inject(t testing.TB, ctx context.Context, tiny *Tiny, agent string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initrd")
	if err := tiny.InjectAgent(ctx, agent, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// The reference qemu-ga, injected with its shared libraries, answers on a cold-plugged port;
// the console, the network, the data disks and the power shims are what the contract says.
func TestBootReferenceAgent(t *testing.T) {
	if _, err := os.Stat(referenceAgent); err != nil {
		t.Skip("the reference agent is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	tiny := buildForTest(t)
	initrd := inject(t, ctx, tiny, referenceAgent)

	dir := t.TempDir()
	ext4, xfs, swap := filepath.Join(dir, "ext4.qcow2"), filepath.Join(dir, "xfs.qcow2"), filepath.Join(dir, "swap.qcow2")
	hello := "written by the host with mkfs.ext4 -d\n"
	if err := CreateExt4Disk(ctx, ext4, DiskSpec{Files: []DiskFile{{Path: "hello.txt", Data: []byte(hello)}}}); err != nil {
		t.Fatal(err)
	}
	if err := CreateXFSDisk(ctx, xfs, DiskSpec{}); err != nil {
		t.Fatal(err)
	}
	if err := CreateSwapDisk(ctx, swap, DiskSpec{}); err != nil {
		t.Fatal(err)
	}

	vm := bootVM(t, ctx, tiny, vmConfig{
		initrd:   initrd,
		cmdline:  tiny.Cmdline(TinyOptions{Mounts: []string{"vda", "vdb"}, Swap: "vdc"}),
		coldPort: true,
		disks:    []string{ext4, xfs, swap},
	})
	agent := newAgentConn(vm.accept(ctx, "qga"))
	ready := vm.waitSerial(ctx, "TINY: READY")
	if err := agent.sync(ctx, 4242); err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU start to TINY: READY %.2fs, to the reference agent's first answer %.2fs",
		ready.Seconds(), time.Since(vm.start).Seconds())
	info, err := agent.command(ctx, `{"execute": "guest-info"}`)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := info["return"].(map[string]any)["version"].(string); !strings.HasPrefix(v, "7.2") {
		t.Errorf("guest-info version %q, want the reference's 7.2", v)
	}

	checks := []struct{ cmd, want string }{
		{"uname -r", tiny.KernelVersion + "\n"},
		{"echo \"[$-]\"", "[]\n"}, // a non-interactive shell: no i in $-
		{"cat /mnt/vda/hello.txt", hello},
		{"awk '$2 ~ /^\\/mnt\\// {print $1, $2, $3}' /proc/mounts", "/dev/vda /mnt/vda ext4\n/dev/vdb /mnt/vdb xfs\n"},
		{"awk 'NR > 1 {print $1}' /proc/swaps", "/dev/vdc\n"},
		{"ip -4 -o addr show dev eth0 | awk '{print $4}'", "10.0.2.15/24\n"},
		{"ip route | awk '$1 == \"default\" {print $3}'", "10.0.2.2\n"},
		{"readlink /dev/virtio-ports/org.qemu.guest_agent.0", "../vport0p1\n"},
		{"readlink /sbin/hwclock; test -c /dev/rtc0 && echo rtc0", "/bin/busybox\nrtc0\n"},
		{"tr ' ' '\\n' < /sys/power/state | grep -x -e mem -e disk", "mem\ndisk\n"},
		{"hwclock -r > /dev/null && echo ok", "ok\n"},
		{"for f in poweroff halt reboot; do readlink /sbin/$f; done", "shutdown\nshutdown\nshutdown\n"},
		{"pidof acpid > /dev/null && echo acpid", "acpid\n"},
		{"printf 'a\\rb\\n\\001\\377'", "a\rb\n\x01\xff"}, // raw: no CR/LF translation
	}
	for _, c := range checks {
		out, rc := vm.shell(ctx, c.cmd)
		if rc != 0 || out != c.want {
			t.Errorf("%s: rc %d, output %q; want %q", c.cmd, rc, out, c.want)
		}
	}
	if _, rc := vm.shell(ctx, "false"); rc != 1 {
		t.Errorf("false: rc %d, want 1", rc)
	}
	// A command that reads stdin gets EOF instead of the harness's next command line.
	if out, rc := vm.shell(ctx, "cat; echo after-cat"); rc != 0 || out != "after-cat\n" {
		t.Errorf("cat with no input: %q rc %d", out, rc)
	}
	// The shell respawns after exit, and the next one is as clean.
	fmt.Fprintf(vm.console, "exit 3\n")
	vm.waitSerialCount(ctx, "TINY: console-start", 2)
	if out, rc := vm.shell(ctx, "echo again"); rc != 0 || out != "again\n" {
		t.Errorf("after exit: %q rc %d", out, rc)
	}

	// The reference powers down with "/sbin/shutdown -h -P +0 ...", which this guest must honour.
	if _, err := agent.Write([]byte(`{"execute": "guest-shutdown"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	vm.waitSerial(ctx, "TINY: shutdown poweroff")
	if err := vm.waitExit(ctx); err != nil {
		t.Errorf("QEMU after guest-shutdown: %v, want exit 0", err)
	}
	vm.qmp.waitEvent(ctx, "SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"})
}

// A static Go agent on a port hot-added over QMP, as the harness does it: the supervisor
// starts it with qga.args, restarts it after an unplug, and /sbin/poweroff powers off.
func TestBootStaticAgentHotplug(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	tiny := buildForTest(t)
	initrd := inject(t, ctx, tiny, staticAgent(t))
	args := []string{"-v", "-b", "guest-get-time,guest-set-time"}
	vm := bootVM(t, ctx, tiny, vmConfig{
		initrd:  initrd,
		cmdline: tiny.Cmdline(TinyOptions{AgentArgs: args, Extra: []string{"tiny.ip=eth1:192.168.77.15/24"}}),
		// A second NIC: up, and addressed only because tiny.ip asks for it.
		extra: []string{"-netdev", "user,id=n1,net=192.168.77.0/24", "-device", "virtio-net-pci,netdev=n1"},
	})
	ready := vm.waitSerial(ctx, "TINY: READY")

	added := time.Now()
	agent := vm.hotAddAgentPort(ctx, "qga1")
	if err := agent.sync(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU start to TINY: READY %.2fs; port hot-added at %.2fs, agent answered %.2fs later",
		ready.Seconds(), added.Sub(vm.start).Seconds(), time.Since(added).Seconds())
	vm.qmp.waitEvent(ctx, "VSERPORT_CHANGE", map[string]any{"id": "qga1", "open": true})
	if r, err := agent.command(ctx, `{"execute": "guest-ping"}`); err != nil || fmt.Sprint(r) != "map[return:map[]]" {
		t.Errorf("guest-ping: %v, %v", r, err)
	}

	if out, _ := vm.shell(ctx, "ip -4 -o addr show dev eth1 | awk '{print $4}'; cat /sys/class/net/eth1/operstate"); out != "192.168.77.15/24\nup\n" {
		t.Errorf("eth1: %q", out)
	}

	want := "/opt/qga/agent\n-m\nvirtio-serial\n-p\n/dev/virtio-ports/org.qemu.guest_agent.0\n-l\n/run/qga.log\n" +
		strings.Join(args, "\n") + "\n"
	if out, _ := vm.shell(ctx, "tr '\\0' '\\n' < /proc/$(pidof agent)/cmdline"); out != want {
		t.Errorf("agent command line:\n%s\nwant:\n%s", out, want)
	}

	vm.qmp.do(ctx, "device_del", map[string]any{"id": "qga1"})
	vm.qmp.waitEvent(ctx, "DEVICE_DELETED", map[string]any{"device": "qga1"})
	vm.waitSerial(ctx, "TINY: agent-exit rc=")
	// mdev removes the link on the port's remove event, which may trail the agent's exit.
	gone := "i=0; while [ -L /dev/virtio-ports/org.qemu.guest_agent.0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; ls /dev/virtio-ports/ | wc -l"
	if out, _ := vm.shell(ctx, gone); strings.TrimSpace(out) != "0" {
		t.Errorf("the port's link outlived the port: %q", out)
	}
	agent2 := vm.hotAddAgentPort(ctx, "qga2")
	if err := agent2.sync(ctx, 2); err != nil {
		t.Fatalf("after re-plugging: %v", err)
	}
	if n := strings.Count(vm.serial.text(), "TINY: agent-start"); n != 2 {
		t.Errorf("agent started %d times, want 2", n)
	}

	fmt.Fprintf(vm.console, "/sbin/poweroff\n")
	vm.waitSerial(ctx, "TINY: shutdown poweroff")
	if err := vm.waitExit(ctx); err != nil {
		t.Errorf("QEMU after poweroff: %v, want exit 0", err)
	}
	vm.qmp.waitEvent(ctx, "SHUTDOWN", map[string]any{"guest": true})
}

// reboot and halt from the console, and QMP's ACPI power button, without an agent.
func TestBootPowerModes(t *testing.T) {
	tiny := buildForTest(t)
	boot := func(t *testing.T, ctx context.Context) *testVM {
		vm := bootVM(t, ctx, tiny, vmConfig{initrd: tiny.Initramfs, cmdline: tiny.Cmdline(TinyOptions{})})
		vm.waitSerial(ctx, "TINY: READY")
		return vm
	}
	t.Run("reboot", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		vm := boot(t, ctx)
		// A bare "reboot" is busybox's applet, which signals PID 1.
		fmt.Fprintf(vm.console, "reboot\n")
		vm.waitSerial(ctx, "TINY: shutdown reboot")
		// -no-reboot turns the guest's reset into an exit.
		if err := vm.waitExit(ctx); err != nil {
			t.Errorf("QEMU: %v", err)
		}
		vm.qmp.waitEvent(ctx, "SHUTDOWN", map[string]any{"guest": true, "reason": "guest-reset"})
	})
	t.Run("halt", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		vm := boot(t, ctx)
		fmt.Fprintf(vm.console, "/sbin/shutdown -h -H +0 'hypervisor initiated shutdown'\n")
		vm.waitSerial(ctx, "TINY: shutdown halt")
		vm.waitSerial(ctx, "System halted")
		// A halted guest sends no event and QEMU keeps running.
		st := vm.qmp.do(ctx, "query-status", nil)
		if s := st["return"].(map[string]any)["status"]; s != "running" {
			t.Errorf("status after halt: %v, want running", s)
		}
	})
	t.Run("acpi-powerdown", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		vm := boot(t, ctx)
		vm.qmp.do(ctx, "system_powerdown", nil)
		vm.waitSerial(ctx, "TINY: acpi-powerbutton")
		vm.waitSerial(ctx, "TINY: shutdown poweroff")
		if err := vm.waitExit(ctx); err != nil {
			t.Errorf("QEMU: %v", err)
		}
		vm.qmp.waitEvent(ctx, "SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"})
	})
}

// Hibernation: /init tries resume= before any mount, so a guest that wrote its image to the
// swap disk comes back, userspace and all, in a second QEMU on the same disk.
func TestBootHibernateResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	tiny := buildForTest(t)
	swap := filepath.Join(t.TempDir(), "swap.qcow2")
	if err := CreateSwapDisk(ctx, swap, DiskSpec{}); err != nil {
		t.Fatal(err)
	}
	cfg := vmConfig{initrd: tiny.Initramfs, disks: []string{swap},
		cmdline: tiny.Cmdline(TinyOptions{Swap: "vda", Resume: "vda"})}

	first := bootVM(t, ctx, tiny, cfg)
	first.waitSerial(ctx, "TINY: resume-none")
	first.waitSerial(ctx, "TINY: READY")
	out, _ := first.shell(ctx, "grep -c vda /proc/swaps; echo before-hibernation > /run/marker")
	if out != "1\n" {
		t.Fatalf("swap not active: %q", out)
	}
	// This shell line finishes only after the resume, in the second QEMU.
	fmt.Fprintf(first.console, "echo disk > /sys/power/state; cat /run/marker; printf '\\n__QGAKIT_ab12_%%d__\\n' $?\n")
	first.qmp.waitEvent(ctx, "SUSPEND_DISK", nil)
	if err := first.waitExit(ctx); err != nil {
		t.Fatalf("QEMU after hibernation: %v", err)
	}

	second := bootVM(t, ctx, tiny, cfg)
	second.waitSerial(ctx, "TINY: resume-try vda")
	var buf []byte
	chunk := make([]byte, 1024)
	if dl, ok := ctx.Deadline(); ok {
		second.console.SetDeadline(dl)
	}
	for !bytes.Contains(buf, []byte("__QGAKIT_ab12_")) {
		n, err := second.console.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if err != nil {
			t.Fatalf("console after resume: %q, %v", buf, err)
		}
	}
	if !bytes.Contains(buf, []byte("before-hibernation\n")) {
		t.Errorf("after resume the shell printed %q, want the marker kept in /run", buf)
	}
	if strings.Count(second.serial.text(), "TINY: READY") != 0 {
		t.Errorf("the second boot ran /init to READY instead of resuming:\n%s", second.serial.text())
	}
}

// Two processes racing to build into an empty cache: one builds, the other waits on the lock
// and gets the same image, and a later call is a silent cache hit. Downloads the kernel again,
// into a private cache.
func TestBuildTinyConcurrentAndCached(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var outs [2]bytes.Buffer
	var errs [2]error
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperBuildTiny$", "-test.v")
			cmd.Env = append(os.Environ(), "QGAKIT_HELPER_BUILD=1")
			cmd.Stdout, cmd.Stderr = &outs[i], &outs[i]
			errs[i] = cmd.Run()
		}()
	}
	wg.Wait()
	dirs := make([]string, 2)
	for i := range 2 {
		if errs[i] != nil {
			t.Fatalf("builder %d: %v\n%s", i, errs[i], outs[i].String())
		}
		t.Logf("builder %d:\n%s", i, outs[i].String())
		if m := regexp.MustCompile(`IMAGE=(\S+)`).FindStringSubmatch(outs[i].String()); m != nil {
			dirs[i] = m[1]
		}
	}
	if dirs[0] == "" || dirs[0] != dirs[1] {
		t.Errorf("the builders got %q and %q, want the same image", dirs[0], dirs[1])
	}
	all := outs[0].String() + outs[1].String()
	if n := strings.Count(all, "tiny: building"); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}
	if !strings.Contains(all, "waiting for it") {
		t.Errorf("neither builder waited on the lock")
	}
	if !strings.HasPrefix(dirs[0], filepath.Join(cache, "qgakit", "tiny-")) {
		t.Errorf("image in %s, want under %s", dirs[0], cache)
	}
	var again bytes.Buffer
	t3, err := BuildTiny(ctx, &again)
	if err != nil || t3.Dir != dirs[0] || again.Len() != 0 {
		t.Errorf("third call: %+v, %v, output %q; want a silent cache hit", t3, err, again.String())
	}
	leftovers, _ := filepath.Glob(filepath.Join(cache, "qgakit", ".tiny-*"))
	if len(leftovers) != 0 {
		t.Errorf("build leftovers: %v", leftovers)
	}
	if _, err := LoadTiny(dirs[0]); err != nil {
		t.Error(err)
	}
}

// TestHelperBuildTiny is one builder process of TestBuildTinyConcurrentAndCached.
func TestHelperBuildTiny(t *testing.T) {
	if os.Getenv("QGAKIT_HELPER_BUILD") != "1" {
		t.Skip("a helper of TestBuildTinyConcurrentAndCached")
	}
	tiny, err := BuildTiny(context.Background(), os.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("IMAGE=%s\n", tiny.Dir)
}

// BenchmarkBootToAgent reports the time from QEMU's start to the agent's first answer on a
// cold-plugged port, for the reference agent and the static stand-in (or $AGENT):
// go test -tags vmtest -run '^$' -bench BootToAgent -benchtime 3x ./harness/image/
func BenchmarkBootToAgent(b *testing.B) {
	tiny := buildForTest(b)
	agents := map[string]string{"static": staticAgent(b)}
	if _, err := os.Stat(referenceAgent); err == nil {
		agents["reference"] = referenceAgent
	}
	for name, agent := range agents {
		b.Run(name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			initrd := inject(b, ctx, tiny, agent)
			var total, ready time.Duration
			for i := 0; i < b.N; i++ {
				vm := bootVM(b, ctx, tiny, vmConfig{initrd: initrd, cmdline: tiny.Cmdline(TinyOptions{}), coldPort: true})
				agentConn := newAgentConn(vm.accept(ctx, "qga"))
				if err := agentConn.sync(ctx, int64(i+1)); err != nil {
					b.Fatal(err)
				}
				total += time.Since(vm.start)
				ready += vm.waitSerial(ctx, "TINY: READY")
				vm.cmd.Process.Kill()
				<-vm.exited
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s-to-agent")
			b.ReportMetric(ready.Seconds()/float64(b.N), "s-to-READY")
			b.ReportMetric(0, "ns/op")
		})
	}
}
