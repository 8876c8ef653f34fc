//go:build vmtest

package vm

// The snapshot test boots the tiny image once and restores it twice:
//
//	go test -tags vmtest -run Snapshot -v ./harness/vm/
//
// The agent is $AGENT when set, else the reference /usr/sbin/qemu-ga.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qgakit/qgakit/harness/image"
)

func TestSnapshotTinyRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tiny, initrd := tinyWithAgent(t, ctx, testAgent())
	disk := filepath.Join(t.TempDir(), "data.raw")
	if err := os.WriteFile(disk, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	var tok [8]byte
	rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])

	tpl := NewTemplate(filepath.Join(t.TempDir(), "tpl"),
		WithLog(testWriter{t}), WithTempRoot(t.TempDir()), WithMemory(256),
		WithKernel(tiny.Kernel, initrd, tiny.Cmdline(image.TinyOptions{})),
		WithNIC(NIC{MAC: "52:54:00:12:34:56"}),
		WithDisk(Disk{Path: disk, Format: "raw", Serial: "data"}),
	)
	coldStart := time.Now()
	err := tpl.Save(ctx, func(ctx context.Context, v *VM) error {
		if _, err := v.WaitSerial(ctx, "TINY: READY"); err != nil {
			return err
		}
		t.Logf("cold boot to READY: %v", time.Since(coldStart).Round(time.Millisecond))
		if _, err := v.WaitSerial(ctx, "TINY: late-modules-loaded"); err != nil {
			return err
		}
		// In RAM (tmpfs) and on the disk: both must travel to every clone. The clock goes years
		// off (the RTC stays), so that only a restore that steps it gets it right.
		_, err := v.Console().RunOK(ctx, "echo "+token+" > /run/token && echo "+token+" > /dev/vda && sync && date -u -s @1000000000")
		return err
	})
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	t.Logf("state: %d MB", tpl.StateBytes()>>20)

	var clones [2]*VM
	for i := range clones {
		began := time.Now()
		// Clone 0 attaches the agent itself, clone 1 lets Restore do it alongside the clock.
		opts := []RestoreOption{RestoreName("clone" + strconv.Itoa(i))}
		if i == 1 {
			opts = append(opts, RestoreAgent())
		}
		v := tpl.RestoreT(t, ctx, opts...)
		restored := time.Since(began)
		c := v.Agent()
		if i == 0 {
			if c != nil {
				t.Fatal("Restore attached the agent without RestoreAgent")
			}
			if c, err = v.AttachAgent(ctx); err != nil {
				t.Fatalf("clone %d: %v", i, err)
			}
		} else if c == nil {
			t.Fatal("RestoreAgent did not attach the agent")
		}
		t.Logf("clone %d: Restore took %v, agent answering %v after start", i,
			restored.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
		if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
			t.Errorf("clone %d: guest-ping: %v", i, err)
		}
		clones[i] = v
	}
	for i, v := range clones {
		con := v.Console()
		out, err := con.RunOK(ctx, "cat /run/token; head -c 16 /dev/vda")
		if want := token + "\n" + token; err != nil || out != want {
			t.Errorf("clone %d: RAM and disk say %q, %v; want %q", i, out, err, want)
		}
		// The clock was stepped to the host's: busybox date -s takes whole seconds.
		before := time.Now()
		out, err = con.RunOK(ctx, "date +%s")
		after := time.Now()
		secs, perr := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if err != nil || perr != nil {
			t.Fatalf("clone %d: date: %q, %v", i, out, err)
		}
		if secs < before.Unix()-1 || secs > after.Unix()+1 {
			t.Errorf("clone %d: guest clock %d, host %d..%d", i, secs, before.Unix(), after.Unix())
		}
		rtc, err := con.RunOK(ctx, "hwclock -r -u")
		t.Logf("clone %d: guest date %d, host %d; hwclock -r: %q (%v)", i, secs, before.Unix(), strings.TrimSpace(rtc), err)
	}
	// The clones' RAM and disks are their own.
	if _, err := clones[0].Console().RunOK(ctx, "echo changed > /run/token && echo changed > /dev/vda && sync"); err != nil {
		t.Fatal(err)
	}
	if out, err := clones[1].Console().RunOK(ctx, "cat /run/token; head -c 16 /dev/vda"); err != nil || out != token+"\n"+token {
		t.Errorf("clone 1 sees clone 0's writes: %q, %v", out, err)
	}
}

// With -rtc base=<date>, a cold-booted guest's clock starts at the RTC's date, not the host's:
// a restore must step the clock there too.
func TestSnapshotClockFollowsRTCBase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tiny, initrd := tinyWithAgent(t, ctx, "/usr/sbin/qemu-ga")
	base := time.Date(2047, 6, 15, 10, 0, 0, 0, time.UTC)
	tpl := NewTemplate(filepath.Join(t.TempDir(), "tpl"),
		WithLog(testWriter{t}), WithTempRoot(t.TempDir()), WithMemory(256),
		WithKernel(tiny.Kernel, initrd, tiny.Cmdline(image.TinyOptions{})),
		WithRTCBase(base.Format("2006-01-02T15:04:05")),
	)
	started := time.Now()
	if err := tpl.Save(ctx, func(ctx context.Context, v *VM) error {
		if _, err := v.WaitSerial(ctx, "TINY: READY"); err != nil {
			return err
		}
		// Years off the RTC, so that only a restore that steps the clock gets it right.
		_, err := v.Console().RunOK(ctx, "date -u -s @1000000000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	v := tpl.RestoreT(t, ctx)
	out, err := v.Console().RunOK(ctx, "date +%s")
	if err != nil {
		t.Fatal(err)
	}
	secs, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("date said %q", out)
	}
	// The RTC has run since the template's QEMU started (it follows the host's clock).
	lo, hi := base.Unix()-1, base.Add(time.Since(started)).Unix()+2
	if secs < lo || secs > hi {
		t.Errorf("guest clock %v, want within [%v, %v]", time.Unix(secs, 0).UTC(), time.Unix(lo, 0).UTC(), time.Unix(hi, 0).UTC())
	}
}

// A template saved with the agent attached gives clones whose agent is the one that was running
// at the save: it answers at once, holds the handle it had opened before the save, and the
// guest's serial log shows no agent start (no port appeared, nothing was executed).
func TestSnapshotWithAgentAttached(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tiny, initrd := tinyWithAgent(t, ctx, testAgent())
	tpl := NewTemplate(filepath.Join(t.TempDir(), "tpl"),
		WithLog(testWriter{t}), WithTempRoot(t.TempDir()), WithMemory(256),
		WithKernel(tiny.Kernel, initrd, tiny.Cmdline(image.TinyOptions{})),
	)
	var handle int64
	err := tpl.Save(ctx, func(ctx context.Context, v *VM) error {
		if _, err := v.WaitSerial(ctx, "TINY: READY"); err != nil {
			return err
		}
		if _, err := v.Console().RunOK(ctx, "true"); err != nil {
			return err
		}
		c, err := v.AttachAgent(ctx)
		if err != nil {
			return err
		}
		return c.Call(ctx, "guest-file-open", map[string]any{"path": "/run/saved", "mode": "w"}, &handle)
	})
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	for i := range 2 {
		v := tpl.RestoreT(t, ctx, RestoreName("clone"+strconv.Itoa(i)), RestoreAgent())
		c := v.Agent()
		if c == nil {
			t.Fatalf("clone %d: no agent after a restore of a template saved with it", i)
		}
		word := "clone" + strconv.Itoa(i)
		if err := c.Call(ctx, "guest-file-write", map[string]any{"handle": handle, "buf-b64": base64.StdEncoding.EncodeToString([]byte(word))}, nil); err != nil {
			t.Fatalf("clone %d: write to the handle opened before the save: %v", i, err)
		}
		if err := c.Call(ctx, "guest-file-close", map[string]any{"handle": handle}, nil); err != nil {
			t.Fatalf("clone %d: close: %v", i, err)
		}
		if out, err := v.Console().RunOK(ctx, "cat /run/saved"); err != nil || out != word {
			t.Errorf("clone %d: the console reads %q, %v; want %q", i, out, err, word)
		}
		if log := string(v.SerialLog()); strings.Contains(log, image.EventAgentStart) {
			t.Errorf("clone %d: the agent was started again after the restore:\n%s", i, log)
		}
		// The port still behaves as an attached one: unplug and plug it again.
		if err := v.DetachAgent(ctx); err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		if _, err := v.AttachAgent(ctx); err != nil {
			t.Fatalf("clone %d: attach again: %v", i, err)
		}
	}
}
