// Package hosttier runs agents on the host the way QEMU's tests/unit/test-qga.c runs qemu-ga:
// each test starts an agent binary with "-m unix-listen -p <dir>/sock -t <dir>/state", talks
// to it over the socket and checks the replies. The same table of cases runs against our
// agent ($QGA_BIN, default bin/qga) and the reference /usr/sbin/qemu-ga, which proves that
// the expectations are the reference's.
//
// To add a case, append a Case to the table from an init function in a cases_*_test.go file:
// the bytes to send and the replies expected (compared as JSON values), and, where the
// reference is wrong, RefWrong saying why plus RefSteps that assert what the reference does
// instead. Behaviour that is not request and reply (signals, daemonizing, other transports)
// has its own test functions, which also run against every agent of Agents.
package hosttier

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ReferenceBin is where Debian installs the reference agent.
const ReferenceBin = "/usr/sbin/qemu-ga"

// Agent is a binary under test.
type Agent struct {
	Name      string
	Bin       string
	Reference bool
}

// Ours is $QGA_BIN, or bin/qga at the repository root.
func Ours() Agent {
	bin := os.Getenv("QGA_BIN")
	if bin == "" {
		_, file, _, _ := runtime.Caller(0)
		bin = filepath.Join(filepath.Dir(file), "..", "..", "bin", "qga")
	}
	return Agent{Name: "qga", Bin: bin}
}

// Agents are the binaries to test: ours, and the reference when it is installed.
func Agents() []Agent {
	as := []Agent{Ours()}
	if _, err := os.Stat(ReferenceBin); err == nil {
		as = append(as, Agent{Name: "qemu-ga", Bin: ReferenceBin, Reference: true})
	}
	return as
}

// ioTimeout bounds every wait on an agent, so that a broken agent fails a test instead of
// hanging it. It is a safety net, not an expectation about speed.
const ioTimeout = 60 * time.Second

// Fixture is one agent process with its own directory and a connected client.
type Fixture struct {
	T        testing.TB
	Agent    Agent
	Dir      string // scratch directory for the test's files
	Sock     string
	StateDir string
	Args     []string // extra arguments
	Vars     map[string]any

	cmd    *exec.Cmd
	exited chan struct{}
	stderr *syncBuffer
	conn   net.Conn
	r      *bufio.Reader
	// Where says which step is running, for failure messages.
	Where string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// New prepares a fixture without starting the agent, so that a test can put files in its
// state directory first.
func New(t testing.TB, a Agent, args ...string) *Fixture {
	t.Helper()
	// Short paths: a unix socket path must fit in 108 bytes, and test names can be long.
	dir, err := os.MkdirTemp("", "qga-")
	if err != nil {
		t.Fatal(err)
	}
	f := &Fixture{T: t, Agent: a, Dir: dir, Sock: filepath.Join(dir, "sock"),
		StateDir: filepath.Join(dir, "state"), Args: args, Vars: map[string]any{"dir": dir}}
	if err := os.Mkdir(f.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Kill()
		os.RemoveAll(dir)
	})
	return f
}

// Start starts a fixture's agent and connects to it.
func Start(t testing.TB, a Agent, args ...string) *Fixture {
	t.Helper()
	f := New(t, a, args...)
	f.Launch()
	f.Connect()
	return f
}

// Launch starts the agent and waits until its socket accepts connections.
func (f *Fixture) Launch() {
	f.T.Helper()
	// The host's own configuration file must not change what is tested.
	f.launch(filepath.Join(f.Dir, "absent.conf"))
}

// LaunchWithConfig is Launch and Connect with a configuration file.
func (f *Fixture) LaunchWithConfig(conf string) {
	f.T.Helper()
	f.launch(conf)
	f.Connect()
}

// launch starts the agent with $QGA_CONF set to conf.
func (f *Fixture) launch(conf string) {
	f.T.Helper()
	args := append([]string{"-m", "unix-listen", "-p", f.Sock, "-t", f.StateDir}, f.Args...)
	cmd := exec.Command(f.Agent.Bin, args...)
	cmd.Env = append(os.Environ(), "QGA_CONF="+conf)
	f.startCmd(cmd)
}

// startCmd starts cmd as the fixture's agent and waits until its socket accepts connections.
func (f *Fixture) startCmd(cmd *exec.Cmd) {
	f.T.Helper()
	f.cmd = cmd
	f.stderr = &syncBuffer{}
	cmd.Stderr = f.stderr
	if err := cmd.Start(); err != nil {
		f.T.Fatalf("start %s: %v", f.Agent.Bin, err)
	}
	f.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(f.exited)
	}()
	deadline := time.Now().Add(ioTimeout)
	for {
		c, err := net.Dial("unix", f.Sock)
		if err == nil {
			c.Close()
			// That probe was a client of its own; the agent serves the next one after it.
			return
		}
		select {
		case <-f.exited:
			f.T.Fatalf("%s exited before listening: %v\nstderr:\n%s", f.Agent.Name, cmd.ProcessState, f.stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			f.T.Fatalf("%s did not listen on %s", f.Agent.Name, f.Sock)
		}
	}
}

// Connect opens a new client connection, closing the previous one.
func (f *Fixture) Connect() {
	f.T.Helper()
	f.Disconnect()
	deadline := time.Now().Add(ioTimeout)
	for {
		c, err := net.Dial("unix", f.Sock)
		if err == nil {
			f.conn, f.r = c, bufio.NewReaderSize(c, 1<<16)
			return
		}
		// The backlog (one connection, in both agents) is full until the agent has accepted
		// the previous client's successor: wait for the agent, not for a fixed time.
		if !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			f.T.Fatalf("connect: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// Disconnect closes the client connection.
func (f *Fixture) Disconnect() {
	if f.conn != nil {
		f.conn.Close()
		f.conn = nil
	}
}

// Send writes raw bytes to the agent.
func (f *Fixture) Send(b []byte) {
	f.T.Helper()
	f.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := f.conn.Write(b); err != nil {
		f.T.Fatalf("send: %v", err)
	}
}

// Reply is one reply line.
type Reply struct {
	Raw       []byte         // as received, with the 0xFF and the newline
	Delimited bool           // started with 0xFF
	Obj       map[string]any // the decoded JSON object (numbers as json.Number)
}

// Return is the reply's "return" member.
func (r Reply) Return() any { return r.Obj["return"] }

// Error is the reply's error class and desc, or "" when it is not an error.
func (r Reply) Error() (class, desc string) {
	e, _ := r.Obj["error"].(map[string]any)
	class, _ = e["class"].(string)
	desc, _ = e["desc"].(string)
	return class, desc
}

// Read reads one reply.
func (f *Fixture) Read() Reply {
	f.T.Helper()
	f.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	line, err := f.r.ReadBytes('\n')
	if err != nil {
		f.T.Fatalf("%s: read reply from %s: %v (partial %q)\nstderr:\n%s", f.Where, f.Agent.Name, err, abbrev(line), f.stderr.String())
	}
	rep := Reply{Raw: line}
	body := line
	if len(body) > 0 && body[0] == 0xFF {
		rep.Delimited, body = true, body[1:]
	}
	obj, err := decodeJSON(body)
	if err != nil {
		f.T.Fatalf("reply %q is not a JSON object: %v", abbrev(line), err)
	}
	rep.Obj = obj
	return rep
}

// Call sends one request and reads its reply.
func (f *Fixture) Call(req string) Reply {
	f.T.Helper()
	f.Send([]byte(req))
	return f.Read()
}

// Expand replaces {{name}} with the fixture's variables.
func (f *Fixture) Expand(s string) string {
	for k, v := range f.Vars {
		s = strings.ReplaceAll(s, "{{"+k+"}}", fmt.Sprint(v))
	}
	return s
}

// Stop asks the agent to quit with SIGTERM and waits for it.
func (f *Fixture) Stop() {
	f.T.Helper()
	f.Disconnect()
	if f.cmd == nil {
		return
	}
	f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.exited:
	case <-time.After(ioTimeout):
		f.T.Fatalf("%s ignored SIGTERM", f.Agent.Name)
	}
	f.cmd = nil
}

// Kill ends the agent at once.
func (f *Fixture) Kill() {
	f.Disconnect()
	if f.cmd != nil {
		f.cmd.Process.Kill()
		<-f.exited
		f.cmd = nil
	}
}

// Exited reports whether the agent process has ended.
func (f *Fixture) Exited() bool {
	select {
	case <-f.exited:
		return true
	default:
		return false
	}
}

// WaitExit waits for the agent to end by itself and returns its exit status.
func (f *Fixture) WaitExit() int {
	f.T.Helper()
	select {
	case <-f.exited:
	case <-time.After(ioTimeout):
		f.T.Fatalf("%s did not exit", f.Agent.Name)
	}
	code := f.cmd.ProcessState.ExitCode()
	f.cmd = nil
	return code
}

// Signal sends sig to the agent.
func (f *Fixture) Signal(sig syscall.Signal) {
	f.T.Helper()
	if err := f.cmd.Process.Signal(sig); err != nil {
		f.T.Fatalf("signal: %v", err)
	}
}

// Stderr is what the agent wrote to its standard error so far.
func (f *Fixture) Stderr() string { return f.stderr.String() }

// Restart stops the agent and starts it again with the same directories and arguments.
func (f *Fixture) Restart() {
	f.T.Helper()
	f.Stop()
	f.Launch()
	f.Connect()
}

func decodeJSON(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var obj map[string]any
	if err := d.Decode(&obj); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("trailing data")
	}
	return obj, nil
}

func abbrev(b []byte) []byte {
	if len(b) > 300 {
		return append(append([]byte{}, b[:300]...), "..."...)
	}
	return b
}
