// Command cloudimage prepares a cloud image profile (building the debian-cloud image, which
// takes minutes, or downloading an IMAGE=url: one) and prints where it is, so it can be done
// ahead of a test run; with -boot it also boots a guest the way the suite does, prints how
// long it took to get ready and to the agent answering, and runs console commands in it:
//
//	go run ./harness/image/cmd/cloudimage
//	go run ./harness/image/cmd/cloudimage -image debian-cloud -agent bin/qga -boot -run 'systemd-analyze blame'
//
// -image defaults to $IMAGE, then debian-cloud; IMAGE_SHA256 and OFFLINE apply as in the suite.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, "; ") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	c := image.ConfigFromEnv()
	img := flag.String("image", c.Image, "debian-cloud, url:<URL> or file:<path> (default $IMAGE, then debian-cloud)")
	agent := flag.String("agent", image.AgentFromImage, "agent binary to inject, or \"image\" for the image's own")
	boot := flag.Bool("boot", false, "boot a guest, attach the agent and run the -run commands")
	cpu := flag.String("cpu", "", "QEMU -cpu for -boot (default: the profile's suggestion)")
	verbose := flag.Bool("v", false, "with -boot, log QEMU's command line and ttyS0")
	timeout := flag.Duration("timeout", 0, "bound of the boot up to the agent answering (default: the profile's)")
	var run, extra multi
	flag.Var(&run, "run", "console command to run after the boot (repeatable)")
	flag.Var(&extra, "append", "extra kernel argument for -boot (repeatable; direct kernel boot only)")
	flag.Parse()
	if *img == "" || *img == image.ProfileTiny {
		*img = image.ProfileDebianCloud
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := mainErr(ctx, c, *img, *agent, *boot, *cpu, *verbose, *timeout, run, extra); err != nil {
		fmt.Fprintln(os.Stderr, "cloudimage:", err)
		os.Exit(1)
	}
}

func mainErr(ctx context.Context, c image.Config, img, agent string, boot bool, cpu string, verbose bool, timeout time.Duration, run, extra []string) error {
	dir, err := os.MkdirTemp("", "cloudimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c.Image, c.Agent, c.Dir, c.Progress = img, agent, dir, os.Stderr
	p, err := image.Prepare(ctx, c)
	if err != nil {
		return err
	}
	fmt.Printf("profile=%s\ndisk=%s (%s)\nkernel=%s\ninitrd=%s\nagent=%s (in the guest: %s)\n",
		p.Profile, p.Disk, p.DiskFormat, p.Kernel, p.Initrd, p.Agent, p.AgentPath())
	if !boot {
		return nil
	}
	g, err := p.Guest(ctx, image.GuestOptions{Extra: extra})
	if err != nil {
		return err
	}
	if g.Kernel != "" {
		fmt.Printf("cmdline=%s\n", g.Cmdline)
	}
	opts := []vm.Option{vm.WithName("cloudimage")}
	if !verbose {
		opts = append(opts, vm.WithLog(io.Discard))
	}
	if cpu != "" {
		g.CPU = cpu
	}
	machine, disks := vm.GuestOptions(g)
	opts = append(opts, machine...)
	for _, d := range disks {
		opts = append(opts, vm.WithDisk(d))
	}
	if timeout == 0 {
		timeout = g.BootTimeout
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	v, err := vm.Start(bctx, opts...)
	if err != nil {
		return err
	}
	defer v.Close()
	if _, err := v.WaitSerial(bctx, g.Ready); err != nil {
		os.Stderr.Write(v.SerialLog())
		return fmt.Errorf("waiting for %q: %w", g.Ready, err)
	}
	fmt.Printf("ready: %.1fs after QEMU started\n", time.Since(start).Seconds())
	if _, err := v.AttachAgent(bctx); err != nil {
		return fmt.Errorf("attach the agent: %w", err)
	}
	fmt.Printf("agent answering: %.1fs after QEMU started\n", time.Since(start).Seconds())
	for _, cmd := range run {
		out, rc, err := v.Console().Run(ctx, cmd)
		if err != nil {
			return err
		}
		fmt.Printf("$ %s  (exit %d)\n%s", cmd, rc, out)
	}
	return nil
}
