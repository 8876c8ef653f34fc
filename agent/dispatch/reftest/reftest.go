// Package reftest runs the reference agent (/usr/sbin/qemu-ga, 7.2) on the host for tests that
// compare this project's answers with the reference's, the way QEMU's test-qga.c drives it:
// unix-listen on a socket in a temporary directory, with its own state directory.
//
// Only side-effect-free commands and guest-file-* on temporary files belong in such tests: the
// reference runs with the test's privileges on the real host.
package reftest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/qgakit/qgakit/agent/protocol"
)

// Binary is where the reference agent is installed.
const Binary = "/usr/sbin/qemu-ga"

// Agent is a running reference agent with one client connection.
type Agent struct {
	StateDir string
	Dir      string // a scratch directory for the test's files
	conn     net.Conn
	r        *bufio.Reader
}

// Start runs the reference with extra command-line arguments, connects to it and stops it when
// the test ends. It skips the test when the reference is not installed. stateDir may be "" for
// a fresh one.
func Start(t testing.TB, stateDir string, extra ...string) *Agent {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skipf("reference agent not installed (%v): nothing to compare with", err)
	}
	dir := t.TempDir()
	if stateDir == "" {
		stateDir = filepath.Join(dir, "state")
		if err := os.Mkdir(stateDir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "qga.sock")
	args := append([]string{"-m", "unix-listen", "-p", sock, "-t", stateDir}, extra...)
	cmd := exec.Command(Binary, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start reference: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := dialWhenListening(ctx, sock, exited)
	if err != nil {
		t.Fatalf("connect to reference: %v (stderr: %s)", err, stderr.String())
	}
	t.Cleanup(func() { conn.Close() })
	files := filepath.Join(dir, "files")
	if err := os.Mkdir(files, 0o755); err != nil {
		t.Fatal(err)
	}
	return &Agent{StateDir: stateDir, Dir: files, conn: conn, r: bufio.NewReader(conn)}
}

// dialWhenListening waits for the agent to listen: the socket appears only once it is ready.
func dialWhenListening(ctx context.Context, sock string, exited <-chan struct{}) (net.Conn, error) {
	delay := time.Millisecond
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			return conn, nil
		}
		select {
		case <-exited:
			return nil, errors.New("reference exited before listening")
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last dial error: %w)", ctx.Err(), err)
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// Raw sends one request (anything that marshals to JSON, or a string sent as is) and returns
// the reply line without its newline. A command that answers nothing would block: don't send
// one.
func (a *Agent) Raw(t testing.TB, req any) []byte {
	t.Helper()
	var b []byte
	switch r := req.(type) {
	case string:
		b = []byte(r)
	case []byte:
		b = r
	default:
		var err error
		if b, err = json.Marshal(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.conn.Write(append(b, '\n')); err != nil {
		t.Fatalf("send to reference: %v", err)
	}
	a.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := a.r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("read reference reply to %s: %v", b, err)
	}
	return bytes.TrimSuffix(line, []byte("\n"))
}

// Reply is a decoded reply in a form both agents' answers can be compared in.
type Reply struct {
	Return any             // decoded with Decode; nil for an error
	Err    *protocol.Error // nil for a success
	ID     any
	HasID  bool
}

// Do sends a request and decodes the reply.
func (a *Agent) Do(t testing.TB, req any) Reply {
	t.Helper()
	line := a.Raw(t, req)
	v, err := Decode(line)
	if err != nil {
		t.Fatalf("reference reply %q: %v", line, err)
	}
	obj, _ := v.(map[string]any)
	var r Reply
	r.ID, r.HasID = obj["id"]
	if e, ok := obj["error"].(map[string]any); ok {
		class, _ := e["class"].(string)
		desc, _ := e["desc"].(string)
		r.Err = &protocol.Error{Class: class, Desc: desc}
		return r
	}
	r.Return = obj["return"]
	return r
}

// Execute is Do for {"execute": name, "arguments": args}; args may be nil.
func (a *Agent) Execute(t testing.TB, name string, args map[string]any) Reply {
	t.Helper()
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	return a.Do(t, req)
}

// Decode parses JSON into the value types the protocol package produces: int64 for integers
// that fit, uint64 above that, float64 otherwise, []any and map[string]any.
func Decode(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after JSON value")
	}
	return Normalize(v), nil
}

// Normalize converts json.Number values (from a UseNumber decoder) to the protocol's types.
func Normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := strconv.ParseInt(x.String(), 10, 64); err == nil {
			return i
		}
		if u, err := strconv.ParseUint(x.String(), 10, 64); err == nil {
			return u
		}
		f, err := strconv.ParseFloat(x.String(), 64)
		if err != nil {
			return math.Inf(1)
		}
		return f
	case []any:
		for i := range x {
			x[i] = Normalize(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = Normalize(x[k])
		}
	}
	return v
}

// Canonical turns a Go value returned by a handler (structs with json tags, slices, ...) into
// the form Decode gives, so that it can be compared with a reference reply.
func Canonical(v any) (any, error) {
	if v == nil {
		return map[string]any{}, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return Decode(b)
}
