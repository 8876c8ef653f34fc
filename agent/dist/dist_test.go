package dist

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Debian's files, installed by `make test` through scripts/install-deps.sh.
const (
	debianUnit = "/lib/systemd/system/qemu-guest-agent.service"
	debianRule = "/lib/udev/rules.d/60-qemu-guest-agent.rules"
)

// ioTimeout keeps a broken agent from hanging the test; it is not a claim about speed.
const ioTimeout = 60 * time.Second

// unitDirectives reduces a unit file to "[Section] Key=Value" lines: comments, blank lines,
// line continuations and spacing around "=" do not change what systemd reads.
func unitDirectives(text string) []string {
	var out []string
	section := ""
	for _, line := range joinContinuations(text) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
			out = append(out, section)
		default:
			k, v, _ := strings.Cut(line, "=")
			out = append(out, section+" "+strings.TrimSpace(k)+"="+strings.TrimSpace(v))
		}
	}
	return out
}

// udevRules reduces a rules file to one line per rule with its key-value pairs separated by
// ", ", which is how udev reads it whatever the spacing and line continuations.
func udevRules(text string) []string {
	var out []string
	for _, line := range joinContinuations(text) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		var pairs []string
		for _, p := range strings.Split(line, ",") {
			if p = strings.TrimSpace(p); p != "" {
				pairs = append(pairs, p)
			}
		}
		out = append(out, strings.Join(pairs, ", "))
	}
	return out
}

func joinContinuations(text string) []string {
	var lines []string
	cur := ""
	for _, l := range strings.Split(text, "\n") {
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		lines = append(lines, cur+l)
		cur = ""
	}
	if cur != "" {
		lines = append(lines, cur)
	}
	return lines
}

// directive returns the values of key in section, in order.
func directive(text, section, key string) []string {
	var vals []string
	prefix := "[" + section + "] " + key + "="
	for _, d := range unitDirectives(text) {
		if v, ok := strings.CutPrefix(d, prefix); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

// escapePath is systemd-escape --path: the unit name systemd gives a device node's path.
func escapePath(p string) string {
	p = strings.Trim(p, "/")
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			b.WriteByte('-')
		case c == '.' && i == 0,
			!(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ':' || c == '_' || c == '.'):
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func readDebian(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s is missing: Debian's qemu-guest-agent is not installed (make test installs it)", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestUnitIsDebians(t *testing.T) {
	want := unitDirectives(readDebian(t, debianUnit))
	if got := unitDirectives(Unit); !slices.Equal(got, want) {
		t.Errorf("our unit reads as\n%s\nDebian's as\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUdevRuleIsDebians(t *testing.T) {
	want := udevRules(readDebian(t, debianRule))
	if got := udevRules(UdevRule); !slices.Equal(got, want) {
		t.Errorf("our rules read as\n%s\nDebian's as\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// The unit and the rule name each other and the port; an edit to one must carry to the other.
func TestUnitAndRuleAgree(t *testing.T) {
	rules := udevRules(UdevRule)
	if len(rules) != 1 {
		t.Fatalf("want one rule, got %q", rules)
	}
	m := regexp.MustCompile(`ATTR\{name\}=="([^"]+)"`).FindStringSubmatch(rules[0])
	if m == nil {
		t.Fatalf("rule matches no port name: %s", rules[0])
	}
	device := escapePath("/dev/virtio-ports/"+m[1]) + ".device"
	if out, err := exec.Command("systemd-escape", "--path", "/dev/virtio-ports/"+m[1]).Output(); err == nil {
		if got := strings.TrimSpace(string(out)) + ".device"; got != device {
			t.Fatalf("test's escaping gives %s, systemd-escape %s", device, got)
		}
	}
	for _, key := range []string{"BindsTo", "After"} {
		if got := directive(Unit, "Unit", key); !slices.Equal(got, []string{device}) {
			t.Errorf("%s=%q, want the port's device unit %s", key, got, device)
		}
	}
	if !strings.Contains(rules[0], `ENV{SYSTEMD_WANTS}="`+UnitName+`"`) {
		t.Errorf("rule does not want %s: %s", UnitName, rules[0])
	}
	if !strings.Contains(rules[0], `TAG+="systemd"`) {
		t.Errorf("rule does not tag the port for systemd, so SYSTEMD_WANTS is ignored: %s", rules[0])
	}
	if argv := execStart(t); argv[0] != AgentPath {
		t.Errorf("unit runs %s, want %s", argv[0], AgentPath)
	}
}

func TestUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	// verify wants the file under its real name.
	path := filepath.Join(t.TempDir(), UnitName)
	if err := os.WriteFile(path, []byte(Unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// execStart is the unit's command line, without systemd's prefix characters.
func execStart(t *testing.T) []string {
	t.Helper()
	vals := directive(Unit, "Service", "ExecStart")
	if len(vals) != 1 {
		t.Fatalf("want one ExecStart, got %q", vals)
	}
	argv := strings.Fields(strings.TrimLeft(vals[0], "-@:+!"))
	if len(argv) == 0 {
		t.Fatal("empty ExecStart")
	}
	return argv
}

// ourAgent is $QGA_BIN or bin/qga, as for the host-tier suite; `make test` builds it.
func ourAgent(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("QGA_BIN")
	if bin == "" {
		_, file, _, _ := runtime.Caller(0)
		bin = filepath.Join(filepath.Dir(file), "..", "..", "bin", "qga")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v: run make agent (or set QGA_BIN)", err)
	}
	return bin
}

// The unit's own command line, with the agent installed at AgentPath and a pty standing in for
// the virtio-serial port at its usual path, must serve requests: ours exactly as the reference.
// A private mount namespace provides the paths (root only), so the host's /dev, /run and
// /usr/sbin stay untouched.
func TestUnitCommandServesThePort(t *testing.T) {
	if os.Geteuid() != 0 || exec.Command("unshare", "--mount", "true").Run() != nil {
		t.Skip("needs root and mount namespaces (unshare --mount)")
	}
	agents := map[string]string{"qga": ourAgent(t)}
	if _, err := os.Stat(AgentPath); err == nil {
		agents["qemu-ga"] = AgentPath
	}
	const request = `{"execute":"guest-sync","arguments":{"id":4242}}` + "\n"
	const want = `{"return": 4242}` + "\n"
	for name, bin := range agents {
		t.Run(name, func(t *testing.T) {
			if got := serveOnce(t, bin, request); got != want {
				t.Errorf("reply %q, want %q", got, want)
			}
		})
	}
}

// serveOnce starts the unit's command with bin as AgentPath, sends request on the port and
// returns the first line of the reply.
func serveOnce(t *testing.T, bin, request string) string {
	master, slave := openPTY(t)
	// The slave stays open in the test so that the raw mode set here holds, and a request
	// written before the agent opens the port waits in the line discipline.
	early, err := unix.Open(slave, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", slave, err)
	}
	t.Cleanup(func() { unix.Close(early) })
	makeRaw(t, early)

	// $1 scratch mount point, $2 the pty, $3 the agent binary, $4 where the unit expects it,
	// then the unit's command.
	const script = `set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 qga-dev "$1"
mkdir "$1/virtio-ports"
: > "$1/virtio-ports/org.qemu.guest_agent.0"
: > "$1/null"
mount --bind "$2" "$1/virtio-ports/org.qemu.guest_agent.0"
mount --bind /dev/null "$1/null"
mount --move "$1" /dev
mount -t tmpfs -o mode=0755 qga-run /run
if [ "$3" != "$4" ]; then
  if [ ! -e "$4" ]; then
    mount -t tmpfs qga-sbin "${4%/*}"
    : > "$4"
  fi
  mount --bind "$3" "$4"
fi
shift 4
exec "$@"`
	scratch := filepath.Join(t.TempDir(), "dev")
	if err := os.Mkdir(scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--mount", "sh", "-c", script, "sh", scratch, slave, bin, AgentPath}, execStart(t)...)
	cmd := exec.Command("unshare", args...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// An agent that exits unblocks the read below, so the test fails with its output at once.
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		exited <- err
		master.SetReadDeadline(time.Now())
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		_ = <-exited // killed: its exit status says nothing
		if t.Failed() {
			t.Logf("agent output:\n%s", stderr.String())
		}
	})

	if _, err := master.WriteString(request); err != nil {
		t.Fatalf("write request: %v", err)
	}
	if err := master.SetReadDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(master).ReadString('\n')
	if err != nil {
		select {
		case werr := <-exited:
			exited <- werr // for the cleanup
			t.Fatalf("agent exited (%v) before replying (got %q)", werr, line)
		default:
		}
		t.Fatalf("read reply: %v (got %q)", err, line)
	}
	return line
}

// openPTY returns a pty master, non-blocking so reads can have a deadline, and its slave's path.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("pty number: %v", err)
	}
	master := os.NewFile(uintptr(fd), "ptmx")
	t.Cleanup(func() { master.Close() })
	return master, fmt.Sprintf("/dev/pts/%d", n)
}

// makeRaw is cfmakeraw: a virtio-serial port passes bytes through untouched, so the pty must
// not echo, buffer lines or translate newlines either.
func makeRaw(t *testing.T, fd int) {
	t.Helper()
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		t.Fatalf("get termios: %v", err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, tio); err != nil {
		t.Fatalf("set termios: %v", err)
	}
}
