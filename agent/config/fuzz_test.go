package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// configSeeds are configuration files at the edges of GLib's key file syntax. They seed
// FuzzConfigFile, and TestConfigSeedsMatchReference checks ours against the reference's -D
// on each of them.
var configSeeds = []string{
	"",
	"[general]\n",
	"[general]",
	"[general]\nmethod=unix-listen\npath=/tmp/s",
	"[general]\r\nmethod=unix-listen\r\npath=/tmp/s\r\n",
	"\ufeff[general]\nverbose=true\n",
	"# c\n  # indented comment\n[general]\n\n\t\nverbose=true\n",
	"[general]\npath = /a b \nstatedir=\t/st\n",
	"[general]\npath=\\s\\s/lead\nlogfile=trail\\s\n",
	"[general]\npath=a\\nb\\tc\\rd\\\\e\n",
	"[general]\npath=end\\\n",
	"[general]\npath=\\q\n",
	"[general]\npath=caf\u00e9/\u65e5\u672c\n",
	"[general]\npath=\xc3\x28\n",
	"[general]\npath=a\x00b\n",
	"[general]\npath[de]=x\npath[en_US.UTF-8@euro]=y\npath=z\n",
	"[general]\npath=1\n[other]\npath=2\n[general]\nstatedir=/3\n",
	"[general]\nverbose=true\nverbose=false\n",
	"[general]\nverbose=1\ndaemon=0\nretry-path=true \n",
	"[general]\nverbose=yes\n",
	"[general]\nverbose= true\n",
	"[general]\nblock-rpcs=guest-ping;guest-info\n",
	"[general]\nblock-rpcs=,guest-ping,,guest-info,\n",
	"[general]\nblock-rpcs=guest-ping\nblacklist=guest-info\n",
	"[general]\nunknown-key=1\nMETHOD=isa-serial\n",
	"[General]\nverbose=true\n",
	"[]\nverbose=true\n",
	"[general] trailing\n",
	"[gen\teral]\nverbose=true\n",
	"[general]\nkey with spaces=1\n",
	"[general]\n=value\n",
	"[general]\nnovalue\n",
	"verbose=true\n",
	"[general]\npath=" + strings.Repeat("p", 4096) + "\n",
	"[general]\nfsfreeze-hook=\nlogfile=\npidfile=\n",
	"[general]\nmethod=vsock-listen\npath=3:1234\n",
	"[general]\x0b\nverbose=1\n",
	"[general]\r\r\nverbose=1\n",
	"[general]\n\x0bverbose=1\n",
	"[general]\n[a] b=c\n",
	"[general]\nk[x]y=c\n",
	"[general]\npath[=x\n",
	"[general]\npath]=x\n",
	"[gen\x00eral]\nverbose=1\n",
	"[general]\nverb\x00ose=1\n",
}

// oursOnlySeeds are seeds with keys that qemu-ga 7.2 does not know (allow-rpcs arrived in
// 8.1): fuzz seeds, but not compared with the reference.
var oursOnlySeeds = []string{
	"[general]\nallow-rpcs=guest-ping\nblock-rpcs=guest-ping\n",
	"[general]\nallow-rpcs= guest-ping,,guest-info\n",
}

// confEnv is a getenv that names conf as the configuration file.
func confEnv(conf string) func(string) string {
	return func(k string) string {
		if k == "QGA_CONF" {
			return conf
		}
		return ""
	}
}

// FuzzConfigFile parses arbitrary configuration files: the parser must not panic, must reject
// a file only with a LoadError in the reference's words, and what -D prints for a file it
// accepts must read back as the same configuration (lists come back reversed, as the
// reference's split_list prepends).
func FuzzConfigFile(f *testing.F) {
	for _, s := range append(slices.Clone(configSeeds), oursOnlySeeds...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		conf := filepath.Join(dir, "qemu-ga.conf")
		if err := os.WriteFile(conf, data, 0o600); err != nil {
			t.Fatal(err)
		}
		inv, err := Parse([]string{"-D"}, confEnv(conf))
		if err != nil {
			var le *LoadError
			if !errors.As(err, &le) && !errors.Is(err, ErrNoPath) {
				t.Fatalf("error %v (%T) is neither a LoadError nor ErrNoPath", err, err)
			}
			if le != nil && !strings.HasPrefix(err.Error(), "error loading configuration from path: "+conf+", ") {
				t.Fatalf("load error text %q", err)
			}
			return
		}
		if inv.Action != DumpConf {
			t.Fatalf("action %v for -D", inv.Action)
		}
		dump := inv.Dump()
		again := filepath.Join(dir, "dumped.conf")
		if err := os.WriteFile(again, []byte(dump), 0o600); err != nil {
			t.Fatal(err)
		}
		inv2, err := Parse([]string{"-D"}, confEnv(again))
		if err != nil {
			t.Fatalf("-D printed what does not load again: %v\n%s", err, dump)
		}
		want := inv.Config
		want.BlockRPCs = reversed(want.BlockRPCs)
		want.AllowRPCs = reversed(want.AllowRPCs)
		got := inv2.Config
		want.given, got.given = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("-D does not round-trip:\nfirst  %+v\nsecond %+v\ndump:\n%s", want, got, dump)
		}
	})
}

// reversed is split_list's order applied once more; empty items vanish in a dump ("a,,b"
// prints and reads back as "a,b" only if the reference drops them, which it does not), so
// only the order changes.
func reversed(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	out := slices.Clone(l)
	slices.Reverse(out)
	return out
}

// asGLibLogs is s as GLib's default log handler writes it in the C locale, where the tests and
// the tiny guest run: each character outside ASCII, and NUL, becomes "?", control characters
// other than tab and newline become \u escapes.
func asGLibLogs(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 0x80 || r == 0:
			b.WriteByte('?')
		case r < 0x20 && r != '\t' && r != '\n':
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestConfigSeedsMatchReference runs each seed through the reference's -D: the exit status and
// the dump (or the error text) must be the same.
func TestConfigSeedsMatchReference(t *testing.T) {
	if _, err := os.Stat(reference); err != nil {
		t.Skip("reference qemu-ga not installed")
	}
	for i, seed := range configSeeds {
		conf := filepath.Join(t.TempDir(), "qemu-ga.conf")
		if err := os.WriteFile(conf, []byte(seed), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(reference, "-D")
		cmd.Env = append(os.Environ(), "QGA_CONF="+conf)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		refErr := cmd.Run()
		inv, err := Parse([]string{"-D"}, confEnv(conf))
		switch {
		case refErr == nil && err != nil:
			t.Errorf("seed %d %q: the reference accepts it, ours: %v", i, seed, err)
		case refErr != nil && err == nil:
			t.Errorf("seed %d %q: ours accepts it, the reference: %v %s", i, seed, refErr, stderr.String())
		case err != nil:
			// The reference's critical line ends with the same text, as GLib logs it.
			if !strings.Contains(stderr.String(), asGLibLogs(err.Error())) {
				t.Errorf("seed %d %q: ours %q, the reference %q", i, seed, err, stderr.String())
			}
		case inv.Dump() != stdout.String():
			t.Errorf("seed %d %q:\nours\n%s\nreference\n%s", i, seed, inv.Dump(), stdout.String())
		}
	}
}
