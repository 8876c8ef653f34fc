// Command cloudimage builds the cached debian-cloud image and prints where it is, so it can be
// prepared ahead of a test run (it takes minutes) or booted by hand:
//
//	go run ./harness/image/cmd/cloudimage
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/qgakit/qgakit/harness/image"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c, err := image.BuildDebianCloud(ctx, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloudimage:", err)
		os.Exit(1)
	}
	fmt.Printf("dir=%s\ndisk=%s\nkernel=%s\ninitrd=%s\nrelease=%s %s\ncmdline=%s\n",
		c.Dir, c.Disk, c.Kernel, c.Initrd, c.Release, c.KernelVersion, c.Cmdline(image.CloudOptions{}))
}
