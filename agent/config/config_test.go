package config

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const reference = "/usr/sbin/qemu-ga"

type dumpCase struct {
	name string
	conf string // "" means no configuration file
	args []string
	want string // expected -D output; "" means the case is compared with the reference only
}

var dumpCases = []dumpCase{
	{name: "defaults", want: "[general]\ndaemon=false\nmethod=virtio-serial\npath=/dev/virtio-ports/org.qemu.guest_agent.0\npidfile=/var/run/qemu-ga.pid\nstatedir=/var/run\nverbose=false\nretry-path=false\nblock-rpcs=\n"},
	{name: "everything on the command line",
		args: []string{"-m", "unix-listen", "-p", "/tmp/s", "-vd", "-r", "-F", "-b", "guest-ping,guest-info", "-b", "x", "-l", "/tmp/log", "-f", "/tmp/pid", "-t", "/tmp/st"},
		want: "[general]\ndaemon=true\nmethod=unix-listen\npath=/tmp/s\nlogfile=/tmp/log\npidfile=/tmp/pid\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\nstatedir=/tmp/st\nverbose=true\nretry-path=true\nblock-rpcs=guest-info,guest-ping,x\n"},
	{name: "optional hook argument attached", args: []string{"-F/hook"}},
	{name: "long hook with =", args: []string{"-F/hook", "--fsfreeze-hook=/h2"}},
	{name: "long hook without = takes no argument", args: []string{"--fsfreeze-hook", "/h"}},
	{name: "clustered with attached argument", args: []string{"-vdmunix-listen", "-p/s"}},
	{name: "long prefixes", args: []string{"--meth=unix-listen", "--pa", "/x", "--b", "y"}},
	{name: "deprecated long alias", args: []string{"--blacklist", "guest-ping"}},
	{name: "operands are ignored", args: []string{"extra", "-b", "q"}},
	{name: "empty and odd list items", args: []string{"-b", ",a,,b,", "-b", ""}},
	{name: "config file with deprecated key, command line appends",
		conf: "# comment\n[general]\ndaemon=true\nmethod=unix-listen\npath=/tmp/p1\nblacklist=guest-ping,guest-info\nblock-rpcs=a,b;c\nverbose=1\nretry-path=false\nfsfreeze-hook=/x/hook\nstatedir=/st\nlogfile=/lf\npidfile=/pf\n",
		args: []string{"-b", "z"},
		want: "[general]\ndaemon=true\nmethod=unix-listen\npath=/tmp/p1\nlogfile=/lf\npidfile=/pf\nfsfreeze-hook=/x/hook\nstatedir=/st\nverbose=true\nretry-path=false\nblock-rpcs=guest-info,guest-ping,z\n"},
	{name: "block-rpcs is split on commas only", conf: "[general]\nblock-rpcs=a,b;c\n", args: []string{"-b", "z"}},
	{name: "command line wins", conf: "[general]\nmethod=isa-serial\nverbose=false\nstatedir=/a\n", args: []string{"-t", "/b", "-v"}},
	{name: "escapes and whitespace", conf: "  [general]  \r\npath = \\s a\\n\\\\x  \nmethod=unix-listen\nstatedir=/s;t\n"},
	{name: "other groups and locale keys ignored", conf: "[other]\nverbose=true\n[general]\npath[de]=x\nverbose=true \n"},
	{name: "last duplicate wins", conf: "[general]\npath=1\npath=2\n"},
	{name: "empty values are kept", args: []string{"--path=", "--statedir=", "--logfile=", "-f", ""},
		want: "[general]\ndaemon=false\nmethod=virtio-serial\npath=\nlogfile=\npidfile=\nstatedir=\nverbose=false\nretry-path=false\nblock-rpcs=\n"},
	{name: "empty values from the file", conf: "[general]\npath=\nmethod=unix-listen\nfsfreeze-hook=\n"},
}

func writeConf(t *testing.T, conf string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qga.conf")
	if conf == "" {
		return path + ".absent"
	}
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func ours(t *testing.T, confPath string, args []string) string {
	t.Helper()
	inv, err := Parse(append(args, "-D"), confEnv(confPath))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if inv.Action != DumpConf {
		t.Fatalf("action %v, want DumpConf", inv.Action)
	}
	return inv.Dump()
}

func TestDumpMatchesExpectations(t *testing.T) {
	for _, c := range dumpCases {
		if c.want == "" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			if got := ours(t, writeConf(t, c.conf), c.args); got != c.want {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

// TestDumpMatchesReference runs the same inputs through the reference's -D.
func TestDumpMatchesReference(t *testing.T) {
	if _, err := os.Stat(reference); err != nil {
		t.Skip("reference qemu-ga not installed")
	}
	for _, c := range dumpCases {
		t.Run(c.name, func(t *testing.T) {
			conf := writeConf(t, c.conf)
			cmd := exec.Command(reference, append(append([]string{}, c.args...), "-D")...)
			cmd.Env = append(os.Environ(), "QGA_CONF="+conf)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			ref, err := cmd.Output()
			if err != nil {
				t.Fatalf("reference: %v: %s", err, stderr.String())
			}
			if got := ours(t, conf, c.args); got != string(ref) {
				t.Errorf("ours\n%q\nreference\n%q", got, ref)
			}
		})
	}
}

func TestGetoptErrors(t *testing.T) {
	cases := []struct {
		args []string
		msg  string
	}{
		{[]string{"--bogus"}, "unrecognized option '--bogus'"},
		{[]string{"--bogus=1"}, "unrecognized option '--bogus=1'"},
		{[]string{"-x"}, "invalid option -- 'x'"},
		{[]string{"-vx"}, "invalid option -- 'x'"},
		{[]string{"-m"}, "option requires an argument -- 'm'"},
		{[]string{"--method"}, "option '--method' requires an argument"},
		{[]string{"--ver"}, "option '--ver' is ambiguous; possibilities: '--version' '--verbose'"},
		{[]string{"--help=x"}, "option '--help' doesn't allow an argument"},
		{[]string{"-s", "install"}, "invalid option -- 's'"},
	}
	for _, c := range cases {
		inv, err := Parse(c.args, func(string) string { return "/nonexistent/qga.conf" })
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if inv.Action != UnknownOption || inv.GetoptErr == nil || inv.GetoptErr.Msg != c.msg {
			t.Errorf("%v: action %v err %v, want getopt error %q", c.args, inv.Action, inv.GetoptErr, c.msg)
		}
	}
}

func TestEarlyActions(t *testing.T) {
	env := func(string) string { return "/nonexistent/qga.conf" }
	cases := []struct {
		args []string
		want Action
	}{
		{[]string{"-h", "--bogus"}, Help},
		{[]string{"--bogus", "-h"}, UnknownOption},
		{[]string{"-V", "-m", "unix-listen"}, Version},
		{[]string{"-b", "help"}, ListCommands},
		{[]string{"-b", "?"}, ListCommands},
		{[]string{"--allow-rpcs=help"}, ListCommands},
		{[]string{"-D", "-h"}, Help},
		{[]string{"-vd"}, Run},
	}
	for _, c := range cases {
		inv, err := Parse(c.args, env)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if inv.Action != c.want {
			t.Errorf("%v: action %v, want %v", c.args, inv.Action, c.want)
		}
	}
}

func TestPathRequired(t *testing.T) {
	env := func(string) string { return "/nonexistent/qga.conf" }
	for _, m := range []string{"unix-listen", "vsock-listen", "bogus"} {
		if _, err := Parse([]string{"-m", m}, env); !errors.Is(err, ErrNoPath) {
			t.Errorf("-m %s: err %v, want %v", m, err, ErrNoPath)
		}
	}
	inv, err := Parse([]string{"-m", "isa-serial"}, env)
	if err != nil || inv.Path != DefaultSerialPath {
		t.Errorf("isa-serial: path %q err %v", inv.Path, err)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct{ conf, want string }{
		{"[general]\ndaemon=maybe\n", "Key file contains key \u201cdaemon\u201d which has a value that cannot be interpreted."},
		{"[general]\nverbose=TRUE\n", "cannot be interpreted"},
		{"garbage\n", "which is not a key-value pair, group, or comment"},
		{"path=x\n[general]\n", "Key file does not start with a group"},
		{"[gen[eral]\n", "Invalid group name"},
		{"[general]\n=x\n", "not a key-value pair"},
		{"[general]\npath=\\x\n", "cannot be interpreted"},
		{"[general]\npath=\xff\n", "not UTF-8"},
	}
	for _, c := range cases {
		path := writeConf(t, c.conf)
		_, err := Parse(nil, func(string) string { return path })
		var le *LoadError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), c.want) ||
			!strings.HasPrefix(err.Error(), "error loading configuration from path: "+path+", ") {
			t.Errorf("%q: err %v, want a LoadError containing %q", c.conf, err, c.want)
		}
	}
}

func TestConfigFileChoice(t *testing.T) {
	envConf := writeConf(t, "[general]\nstatedir=/from-env\n")
	explicit := writeConf(t, "[general]\nstatedir=/from-c\n")
	env := confEnv(envConf)
	inv, err := Parse(nil, env)
	if err != nil || inv.StateDir != "/from-env" || inv.ConfigFile != envConf {
		t.Fatalf("QGA_CONF: statedir %q file %q err %v", inv.StateDir, inv.ConfigFile, err)
	}
	inv, err = Parse([]string{"-c", explicit}, env)
	if err != nil || inv.StateDir != "/from-c" {
		t.Fatalf("-c: statedir %q err %v", inv.StateDir, err)
	}
	if _, err := Parse([]string{"--config", explicit + ".missing"}, env); err == nil {
		t.Fatal("-c with a missing file was accepted")
	}
}

func TestWorldWritableConfigRefused(t *testing.T) {
	path := writeConf(t, "[general]\nmethod=isa-serial\n")
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	_, err := Parse(nil, func(string) string { return path })
	if err == nil || !strings.Contains(err.Error(), "world-writable") {
		t.Fatalf("err %v, want a world-writable refusal", err)
	}
}

func TestBlacklistWarning(t *testing.T) {
	path := writeConf(t, "[general]\nblacklist=a\n")
	inv, err := Parse(nil, func(string) string { return path })
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Warnings) != 1 || !strings.Contains(inv.Warnings[0], "deprecated 'blacklist' key") {
		t.Fatalf("warnings %q", inv.Warnings)
	}
}

func TestAllowRPCsDumpedOnlyWhenSet(t *testing.T) {
	got := ours(t, "/nonexistent", []string{"-a", "guest-ping,guest-info"})
	if !strings.HasSuffix(got, "block-rpcs=\nallow-rpcs=guest-info,guest-ping\n") {
		t.Fatalf("dump %q", got)
	}
}
