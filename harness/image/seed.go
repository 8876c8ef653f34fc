package image

// The NoCloud seed: an ISO 9660 volume labelled CIDATA that cloud-init reads at boot (meta-data
// and user-data at its root), carrying the agent under test and images/debian-cloud/seed's
// scripts under qgakit/. The user-data is one bootcmd that mounts the volume and runs
// qgakit/setup from it (images/debian-cloud/seed/setup says what that does). Nothing in it is
// specific to the debian-cloud image: a downloaded Debian or Ubuntu cloud image takes the
// same seed.

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/qgakit/qgakit/images"
)

// SeedLabel is the seed volume's label, which NoCloud looks for.
const SeedLabel = "CIDATA"

// CloudAgentPath is where the seed installs an injected agent in a cloud guest.
const CloudAgentPath = "/opt/qga/agent"

// ImageAgentPath is where Debian and Ubuntu keep their qemu-ga, which AGENT=image runs (the
// seed also looks in /usr/bin and /usr/local/bin).
const ImageAgentPath = "/usr/sbin/qemu-ga"

// SeedOptions is what one boot's seed carries.
type SeedOptions struct {
	// Agent is the agent binary on the host to install as CloudAgentPath; empty runs the
	// image's own qemu-ga instead (AGENT=image).
	Agent string
	// AgentArgs are appended to the agent's command line.
	AgentArgs []string
	// Mounts are block devices (vda, vdb) mounted on /mnt/<name> before READY.
	Mounts []string
	// Swap is a block device enabled as swap before READY.
	Swap string
	// InstanceID is cloud-init's instance id; empty means "qgakit".
	InstanceID string
}

// glibcLibs are the libraries of the C library itself. An injected agent uses the guest's
// copies: they must come from one glibc build with the guest's loader, which stays the
// guest's, and every guest has them.
var glibcLibs = map[string]bool{
	"ld-linux-x86-64.so.2": true, "libc.so.6": true, "libm.so.6": true, "libpthread.so.0": true,
	"libdl.so.2": true, "librt.so.1": true, "libresolv.so.2": true, "libutil.so.1": true,
	"libanl.so.1": true, "libmvec.so.1": true, "libthread_db.so.1": true, "libBrokenLocale.so.1": true,
}

// WriteSeed writes out, the NoCloud seed for o (with xorriso, no loop device). out appears
// complete or not at all.
func WriteSeed(ctx context.Context, out string, o SeedOptions) error {
	for _, a := range o.AgentArgs {
		if strings.ContainsAny(a, "\n\x00") {
			return fmt.Errorf("seed: agent argument %q: a newline or NUL cannot travel in the seed", a)
		}
	}
	for _, d := range append(append([]string(nil), o.Mounts...), o.Swap) {
		if strings.ContainsAny(strings.TrimPrefix(d, "/dev/"), "/ '\"\\$`\n") {
			return fmt.Errorf("seed: block device %q: want a name like vdb", d)
		}
	}
	if _, err := lookTool("xorriso"); err != nil {
		return fmt.Errorf("xorriso not found: install the cloud tools (scripts/install-deps.sh cloud)")
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer os.RemoveAll(tmp)
	stage := filepath.Join(tmp, "seed")
	if err := stageSeed(stage, o); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	iso := filepath.Join(tmp, "seed.iso")
	// -R (Rock Ridge) keeps the files' modes and long names; -J (Joliet) is for the odd guest
	// without Rock Ridge support.
	if _, err := runTool(ctx, "", "xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-V", SeedLabel,
		"-R", "-J", stage); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := os.Rename(iso, out); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}

// stageSeed lays out the seed's files in dir.
func stageSeed(dir string, o SeedOptions) error {
	q := filepath.Join(dir, "qgakit")
	if err := os.MkdirAll(q, 0o755); err != nil {
		return err
	}
	ud, err := images.DebianCloud.ReadFile("debian-cloud/seed/user-data")
	if err != nil {
		return err
	}
	id := o.InstanceID
	if id == "" {
		id = "qgakit"
	}
	files := map[string][]byte{
		"user-data": ud,
		// dsmode local: bootcmd runs in cloud-init's first stage instead of after the network.
		"meta-data":         []byte(fmt.Sprintf("instance-id: %s\nlocal-hostname: qgakit\ndsmode: local\n", id)),
		"qgakit/config":     seedConfig(o),
		"qgakit/agent-args": agentArgsFile(o.AgentArgs),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	err = fs.WalkDir(images.DebianCloud, "debian-cloud/seed", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "user-data" {
			return err
		}
		b, err := fs.ReadFile(images.DebianCloud, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(q, d.Name())
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			return err
		}
		return os.Chmod(dst, 0o755)
	})
	if err != nil {
		return fmt.Errorf("write the seed's scripts: %w", err)
	}
	if o.Agent == "" {
		return nil
	}
	if err := checkAgentBinary(o.Agent); err != nil {
		return err
	}
	if err := copyFile(o.Agent, filepath.Join(q, "agent"), 0o755); err != nil {
		return err
	}
	libs, err := sharedLibs(o.Agent, hostLibDirs())
	if err != nil {
		return fmt.Errorf("libraries of %s: %w", o.Agent, err)
	}
	for _, l := range libs {
		base := filepath.Base(l.Guest)
		if glibcLibs[base] || strings.HasPrefix(base, "libnss_") {
			continue
		}
		if err := os.MkdirAll(filepath.Join(q, "lib"), 0o755); err != nil {
			return err
		}
		if err := copyFile(l.Host, filepath.Join(q, "lib", base), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// seedConfig is qgakit/config, which setup sources.
func seedConfig(o SeedOptions) []byte {
	mode := "inject"
	if o.Agent == "" {
		mode = "image"
	}
	mounts := make([]string, len(o.Mounts))
	for i, m := range o.Mounts {
		mounts[i] = strings.TrimPrefix(m, "/dev/")
	}
	return []byte(fmt.Sprintf("# Written by harness/image for one boot; sourced by setup.\nQGAKIT_AGENT=%s\nQGAKIT_MOUNTS=%s\nQGAKIT_SWAP=%s\n",
		shQuote(mode), shQuote(strings.Join(mounts, " ")), shQuote(strings.TrimPrefix(o.Swap, "/dev/"))))
}

// agentArgsFile is qgakit/agent-args: one argument a line, read back exactly by the supervisor.
func agentArgsFile(args []string) []byte {
	var b strings.Builder
	for _, a := range args {
		b.WriteString(a)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// seedFS is images/debian-cloud/seed, whose files every seed carries.
func seedFS() fs.FS {
	s, err := fs.Sub(images.DebianCloud, "debian-cloud/seed")
	if err != nil {
		panic(err) // a constant, valid path into an embedded tree
	}
	return s
}
