package hosttier

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// alive reports whether pid runs (a zombie does not count: the daemon's parent is gone, and
// whoever inherits it may reap it late).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func init() {
	cases = append(cases,
		Case{Name: "transport/client leaves mid-reply",
			RefWrong: "qemu-ga treats the failed write and the reset connection as a channel error " +
				"and exits (status 0) when a unix-listen client hangs up in the middle of a reply",
			Steps: []Step{
				{Do: leaveMidReply},
				{Do: func(t testing.TB, f *Fixture) { f.Connect() }, Send: ping, Want: []string{pong}},
			},
			RefSteps: []Step{
				{Do: leaveMidReply},
				{Do: func(t testing.TB, f *Fixture) {
					if code := f.WaitExit(); code != 0 {
						t.Fatalf("reference exited with %d, expected 0", code)
					}
				}},
			}},
	)
}

// leaveMidReply asks for a 40 MB read and hangs up after the first bytes of the reply.
func leaveMidReply(t testing.TB, f *Fixture) {
	path := filepath.Join(f.Dir, "big")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 40<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	h := f.Call(fileOpen(path, "r")).Return()
	f.Send([]byte(fileCall("read", fmt.Sprint(h), `,"count":40000000`)))
	buf := make([]byte, 16)
	f.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := f.conn.Read(buf); err != nil {
		t.Fatal(err)
	}
	f.Disconnect()
}

// run runs bin with args and returns stdout, stderr and the exit status.
func run(t testing.TB, bin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", bin, err)
	}
	return stdout.String(), stderr.String(), code
}

var noConf = []string{"QGA_CONF=/nonexistent/qemu-ga.conf"}

// The command line's answers that do not depend on the implementation are the reference's.
func TestCommandLine(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			out, _, code := run(t, a.Bin, noConf, "-V")
			if code != 0 || !regexp.MustCompile(`^QEMU Guest Agent \S+\n$`).MatchString(out) {
				t.Errorf("-V: %d %q", code, out)
			}
			out, errOut, code := run(t, a.Bin, noConf, "--bogus")
			if code != 1 || out != "Unknown option, try '"+a.Bin+" --help' for more information.\n" ||
				errOut != a.Bin+": unrecognized option '--bogus'\n" {
				t.Errorf("--bogus: %d %q %q", code, out, errOut)
			}
			out, errOut, code = run(t, a.Bin, noConf, "-m")
			if code != 1 || errOut != a.Bin+": option requires an argument -- 'm'\n" || !strings.HasPrefix(out, "Unknown option") {
				t.Errorf("-m: %d %q %q", code, out, errOut)
			}
			out, _, code = run(t, a.Bin, noConf, "-h")
			if code != 0 || !strings.HasPrefix(out, "Usage: "+a.Bin+" [-m <method> -p <path>] [<options>]\nQEMU Guest Agent ") ||
				!strings.Contains(out, "  -b, --block-rpcs  comma-separated list of RPCs to disable (no spaces,\n") {
				t.Errorf("-h: %d %q", code, out)
			}
			_, errOut, code = run(t, a.Bin, noConf, "-m", "unix-listen")
			if code != 1 || !strings.Contains(errOut, "CRITICAL **") || !strings.Contains(errOut, ": must specify a path for this channel\n") {
				t.Errorf("no path: %d %q", code, errOut)
			}
			out, _, code = run(t, a.Bin, noConf, "-b", "help")
			names := strings.Fields(out)
			if code != 0 || len(names) < 23 || names[0] != "guest-sync-delimited" || names[1] != "guest-sync" {
				t.Errorf("-b help: %d %q", code, out)
			}
			// -a arrived in qemu-ga 8.1: 7.2 rejects it, ours lists the commands like -b help.
			out, _, code = run(t, a.Bin, noConf, "-a", "help")
			if a.Reference && (code != 1 || !strings.HasPrefix(out, "Unknown option")) ||
				!a.Reference && (code != 0 || strings.Join(strings.Fields(out), ",") != strings.Join(names, ",")) {
				t.Errorf("-a help: %d %q", code, out)
			}
			out, _, code = run(t, a.Bin, noConf, "-m", "unix-listen", "-p", "/s", "-D")
			if code != 0 || !strings.Contains(out, "\nmethod=unix-listen\npath=/s\n") {
				t.Errorf("-D: %d %q", code, out)
			}
			conf := filepath.Join(t.TempDir(), "bad.conf")
			if err := os.WriteFile(conf, []byte("[general]\ndaemon=maybe\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, errOut, code = run(t, a.Bin, []string{"QGA_CONF=" + conf}, "-D")
			if code != 1 || !strings.Contains(errOut, "error loading configuration from path: "+conf+", ") {
				t.Errorf("bad config: %d %q", code, errOut)
			}
		})
	}
}

// Both agents list the same vCPUs and the same interfaces on this host.
func TestSameAnswer(t *testing.T) {
	as := Agents()
	if len(as) < 2 {
		t.Skip("reference qemu-ga not installed")
	}
	for _, cmd := range []string{"guest-get-vcpus", "guest-network-get-interfaces"} {
		t.Run(cmd, func(t *testing.T) {
			var answers []any
			for _, a := range as {
				f := Start(t, a)
				r := f.Call(`{"execute":"` + cmd + `"}`)
				if r.Obj["error"] != nil {
					t.Fatalf("%s: %q", a.Name, r.Raw)
				}
				answers = append(answers, stripStatistics(r.Return()))
			}
			if !reflect.DeepEqual(answers[0], answers[1]) {
				a, _ := json.Marshal(answers[0])
				b, _ := json.Marshal(answers[1])
				t.Fatalf("ours:\n%s\nreference:\n%s", a, b)
			}
		})
	}
}

// stripStatistics drops the traffic counters, which move between the two calls; which
// interfaces have them and which counters they have must still agree.
func stripStatistics(v any) any {
	list, ok := v.([]any)
	if !ok {
		return v
	}
	for _, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			continue
		}
		if st, ok := m["statistics"].(map[string]any); ok {
			for k := range st {
				st[k] = "counter"
			}
		}
	}
	return list
}

// SIGTERM ends a thawed agent cleanly.
func TestSIGTERMQuits(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			f := Start(t, a)
			f.Call(ping)
			f.Signal(syscall.SIGTERM)
			if code := f.WaitExit(); code != 0 {
				t.Fatalf("exit status %d after SIGTERM", code)
			}
		})
	}
}

var logLine = regexp.MustCompile(`^[0-9]+\.[0-9]{1,6}: (debug|info|message|warning|critical|error): `)

// -l appends the reference's log lines to a file; -v adds the debug ones.
func TestLogFile(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			f := New(t, a)
			log := filepath.Join(f.Dir, "log")
			if err := os.WriteFile(log, []byte("earlier line\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			f.Args = []string{"-v", "-l", log}
			f.Launch()
			f.Connect()
			f.Call(ping)
			f.Stop()
			b, _ := os.ReadFile(log)
			lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			if lines[0] != "earlier line" {
				t.Fatalf("log file was not appended to: %q", b)
			}
			for _, l := range lines[1:] {
				if !logLine.MatchString(l) {
					t.Errorf("log line %q", l)
				}
			}
			for _, want := range []string{": debug: read data, count: 24, data: " + ping, ": debug: processing command", ": debug: sending data, count: 15"} {
				if !strings.Contains(string(b), want+"\n") {
					t.Errorf("log lacks %q:\n%s", want, b)
				}
			}
		})
	}
}

// A log file that cannot be opened stops the agent.
func TestLogFileUnopenable(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			dir := t.TempDir()
			_, errOut, code := run(t, a.Bin, noConf, "-m", "unix-listen", "-p", filepath.Join(dir, "s"), "-t", dir,
				"-l", "/nonexistent/dir/log")
			if !strings.Contains(errOut, ": critical: unable to open specified log file: No such file or directory\n") {
				t.Errorf("stderr %q", errOut)
			}
			// The reference returns 0 after "error initializing guest agent" (its main()
			// leaves ret at EXIT_SUCCESS on that path); ours reports the failure.
			want := 1
			if a.Reference {
				want = 0
			}
			if code != want {
				t.Errorf("exit status %d, want %d", code, want)
			}
		})
	}
}

// With -r an unavailable channel is retried every 5 s instead of ending the agent.
func TestRetryPath(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			sockDir := filepath.Join(dir, "later")
			sock := filepath.Join(sockDir, "sock")
			// Without -r the agent gives up.
			_, errOut, code := run(t, a.Bin, noConf, "-m", "unix-listen", "-p", sock, "-t", dir)
			if code != 1 || !strings.Contains(errOut, "failed to initialize guest agent channel") {
				t.Fatalf("without -r: %d %q", code, errOut)
			}
			cmd := exec.Command(a.Bin, "-m", "unix-listen", "-p", sock, "-t", dir, "-r")
			cmd.Env = append(os.Environ(), noConf...)
			var stderr syncBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			t.Cleanup(func() { cmd.Process.Kill(); <-exited })
			// Once the agent has failed (a critical line, logged without -v too), make the
			// path possible.
			for !strings.Contains(stderr.String(), "failed to initialize guest agent channel") {
				select {
				case <-exited:
					t.Fatalf("agent exited with -r: %s", stderr.String())
				case <-time.After(10 * time.Millisecond):
				}
			}
			if err := os.Mkdir(sockDir, 0o700); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(ioTimeout)
			for {
				c, err := net.Dial("unix", sock)
				if err == nil {
					c.Write([]byte(ping))
					buf := make([]byte, 64)
					c.SetReadDeadline(time.Now().Add(ioTimeout))
					n, _ := c.Read(buf)
					c.Close()
					if string(buf[:n]) != pong+"\n" {
						t.Fatalf("reply %q", buf[:n])
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("not served after the path appeared: %s", stderr.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// -d: the parent exits 0 once the daemon is up, the daemon holds a locked pidfile with its pid,
// a second daemon with the same pidfile fails, and SIGTERM removes the pidfile.
func TestDaemonize(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "qga-d-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			sock, pidfile := filepath.Join(dir, "sock"), filepath.Join(dir, "pid")
			args := []string{"-d", "-m", "unix-listen", "-p", sock, "-t", dir, "-f", pidfile}
			_, errOut, code := run(t, a.Bin, noConf, args...)
			if code != 0 {
				t.Fatalf("parent exit status %d: %s", code, errOut)
			}
			// The reference's parent exits right after fork: wait for the pidfile's content.
			var pid int
			deadline := time.Now().Add(ioTimeout)
			for {
				b, _ := os.ReadFile(pidfile)
				if p, err := strconv.Atoi(strings.TrimSuffix(string(b), "\n")); err == nil && strings.HasSuffix(string(b), "\n") {
					pid = p
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no pidfile")
				}
				time.Sleep(10 * time.Millisecond)
			}
			proc, _ := os.FindProcess(pid)
			defer proc.Kill()
			if !alive(pid) {
				t.Fatalf("pid %d from the pidfile is not running", pid)
			}
			sid, _ := unix.Getsid(pid)
			if sid != pid {
				t.Errorf("daemon session %d, want its own (%d)", sid, pid)
			}
			cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
			if cwd != "/" {
				t.Errorf("daemon cwd %q, want /", cwd)
			}
			var c net.Conn
			for {
				if c, err = net.Dial("unix", sock); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("daemon does not listen: %v", err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			c.Write([]byte(ping))
			buf := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(ioTimeout))
			n, _ := c.Read(buf)
			c.Close()
			if string(buf[:n]) != pong+"\n" {
				t.Fatalf("daemon replied %q", buf[:n])
			}

			// A second daemon on the same pidfile must fail and leave the first one's alone.
			// Ours waits for its child and reports; the reference's parent exits 0 at once
			// and its child's complaint goes to /dev/null.
			second := append([]string{}, args...)
			second[4] = filepath.Join(dir, "sock2")
			_, errOut, code = run(t, a.Bin, noConf, second...)
			if !a.Reference && (code != 1 || !strings.Contains(errOut, "Cannot lock pid file: Resource temporarily unavailable")) {
				t.Errorf("second daemon: %d %q", code, errOut)
			}
			if b, _ := os.ReadFile(pidfile); string(b) != fmt.Sprintf("%d\n", pid) || !alive(pid) {
				t.Errorf("pidfile %q after the second daemon, first daemon alive %v", b, alive(pid))
			}

			proc.Signal(syscall.SIGTERM)
			for alive(pid) {
				if time.Now().After(deadline) {
					t.Fatal("daemon ignored SIGTERM")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, err := os.Stat(pidfile); !os.IsNotExist(err) && !a.Reference {
				t.Errorf("pidfile left behind: %v", err)
			}
		})
	}
}
