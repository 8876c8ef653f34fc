//go:build deps

// Package deps pins the modules the tree is about to import while its packages are written.
package deps
import (
 _ "github.com/onsi/ginkgo/v2"
 _ "github.com/onsi/gomega"
 _ "github.com/digitalocean/go-qemu/qmp"
 _ "github.com/digitalocean/go-qemu/qapi-schema"
 _ "golang.org/x/sys/unix"
)
