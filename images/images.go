// Package images holds the recipes of the guest images as embedded files, so that the builder in
// harness/image (which cannot embed files outside its own directory) and the cache key it derives
// from them see exactly the same bytes.
package images

import "embed"

// Tiny is the tiny profile: tiny/modules.conf (which kernel modules the initramfs loads, and
// when), tiny/links (symlinks the builder adds) and tiny/rootfs/ (files copied into the
// initramfs at the same path; a file that starts with "#!" becomes executable).
//
//go:embed all:tiny
var Tiny embed.FS

// DebianCloud is the debian-cloud profile: debian-cloud/packages (what mmdebstrap installs),
// debian-cloud/customize (the build's last step, run on the finished root), debian-cloud/rootfs/
// (files copied into the image) and debian-cloud/seed/ (the scripts every NoCloud seed carries,
// for this image and for downloaded ones alike).
//
//go:embed all:debian-cloud
var DebianCloud embed.FS
