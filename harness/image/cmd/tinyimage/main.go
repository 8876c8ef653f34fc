// Command tinyimage builds the cached tiny image and prints where it is, optionally with an
// agent injected, so the image can be prepared ahead of a test run or booted by hand:
//
//	go run ./harness/image/cmd/tinyimage [-agent bin/qga -out /tmp/initrd]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/qgakit/qgakit/harness/image"
)

func main() {
	agent := flag.String("agent", "", "inject this agent binary")
	out := flag.String("out", "", "where to write the initramfs with the agent (with -agent)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *agent, *out); err != nil {
		fmt.Fprintln(os.Stderr, "tinyimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, agent, out string) error {
	t, err := image.BuildTiny(ctx, os.Stderr)
	if err != nil {
		return err
	}
	initrd := t.Initramfs
	if agent != "" {
		if out == "" {
			return fmt.Errorf("-agent needs -out")
		}
		if err := t.InjectAgent(ctx, agent, out); err != nil {
			return err
		}
		initrd = out
	}
	fmt.Printf("kernel=%s\ninitrd=%s\nrelease=%s\ncmdline=%s\n", t.Kernel, initrd, t.KernelVersion, t.Cmdline(image.TinyOptions{}))
	return nil
}
