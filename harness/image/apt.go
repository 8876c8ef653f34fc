package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// debPackage is one Debian package at one version.
type debPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

func (p debPackage) String() string { return p.Name + "=" + p.Version }

// runTool runs a host tool and returns its stdout; the error carries stderr, which is where
// apt and mkfs explain themselves.
func runTool(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	path, err := lookTool(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// lookTool finds a host tool, also in the sbin directories a non-root PATH often lacks
// (mkfs.ext4, mkswap).
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install the e2e tools (scripts/install-deps.sh e2e)", name)
}

// aptRecord returns the fields of the candidate version's record of pkg from apt's cache.
func aptRecord(ctx context.Context, pkg string) (map[string]string, error) {
	out, err := runTool(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return nil, err
	}
	rec := map[string]string{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" {
			if len(rec) > 0 {
				break // one record is enough: the candidate
			}
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			if last != "" {
				rec[last] += "\n" + strings.TrimSpace(l)
			}
			continue
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		last = k
		rec[k] = strings.TrimSpace(v)
	}
	if rec["Version"] == "" {
		return nil, fmt.Errorf("apt knows no candidate of %s", pkg)
	}
	return rec, nil
}

var exactDep = regexp.MustCompile(`^(linux-image-[^\s(]+)\s*\(\s*=\s*([^\s)]+)\s*\)`)

// kernelFromMeta picks the real kernel package out of the metapackage's Depends field
// ("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), ...").
func kernelFromMeta(depends string) (debPackage, error) {
	for _, alt := range strings.Split(depends, ",") {
		for _, d := range strings.Split(alt, "|") {
			if m := exactDep.FindStringSubmatch(strings.TrimSpace(d)); m != nil {
				return debPackage{Name: m[1], Version: m[2]}, nil
			}
		}
	}
	return debPackage{}, fmt.Errorf("no exact linux-image dependency in %q", depends)
}

// resolveKernel resolves the kernel metapackage to the package and version apt would
// install now.
func resolveKernel(ctx context.Context, meta string) (debPackage, error) {
	rec, err := aptRecord(ctx, meta)
	if err != nil {
		return debPackage{}, fmt.Errorf("resolve %s: %w", meta, err)
	}
	k, err := kernelFromMeta(rec["Depends"])
	if err != nil {
		return debPackage{}, fmt.Errorf("resolve %s %s: %w", meta, rec["Version"], err)
	}
	return k, nil
}

// aptDownload fetches pkg's .deb into dir and returns its path.
func aptDownload(ctx context.Context, dir string, pkg debPackage) (string, error) {
	args := []string{"download", "-q"}
	if os.Geteuid() == 0 {
		// apt drops to the _apt user, who cannot write into a root-only temp dir.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	if _, err := runTool(ctx, dir, "apt-get", append(args, pkg.String())...); err != nil {
		return "", fmt.Errorf("download %s: %w", pkg, err)
	}
	matches, _ := filepath.Glob(filepath.Join(dir, pkg.Name+"_*.deb"))
	if len(matches) != 1 {
		return "", fmt.Errorf("download %s: expected one .deb in %s, found %d", pkg, dir, len(matches))
	}
	return matches[0], nil
}

// aptUpdate refreshes apt's lists, which a fresh machine may lack or have stale (a 404 on a
// superseded version). Only root can.
func aptUpdate(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("apt's package lists need a refresh (apt-get update), which needs root")
	}
	if _, err := runTool(ctx, "", "apt-get", "update", "-q"); err != nil {
		return fmt.Errorf("refresh package lists: %w", err)
	}
	return nil
}

// installedVersion returns the version of pkg if dpkg has it installed, or "".
func installedVersion(ctx context.Context, pkg string) string {
	out, err := runTool(ctx, "", "dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", pkg)
	if err != nil {
		return ""
	}
	status, ver, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	if status != "installed" {
		return ""
	}
	return ver
}
