package qga

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const referenceAgent = "/usr/sbin/qemu-ga"

// startReference runs the reference qemu-ga on the host, socket-activated on a listening socket
// the test made (so there is no socket file to wait for), and returns the socket's path.
func startReference(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(referenceAgent); err != nil {
		t.Skip("the reference agent is not installed (scripts/install-deps.sh test)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	f, err := ul.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	// LISTEN_PID must be the agent's own pid, which only a shell that execs it knows.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" -t "$1"`, referenceAgent, state)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{f}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("qemu-ga stderr: %s", stderr.String())
		}
	})
	return sock
}

func TestAgainstReference(t *testing.T) {
	sock := startReference(t)
	// Generous: a 64 MB reply on a loaded two-core machine (or under -race) takes a while.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Leave a partial request behind: the 0xFF of Sync must flush it.
	if err := c.Send(ctx, []byte(`{"execute": "guest-ping"`)); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if !strings.Contains(transcriptOf(c), `xx {"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}`) {
		t.Errorf("the reference's complaint about 0xFF was not skipped:\n%s", transcriptOf(c))
	}
	if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	var info struct {
		Version string `json:"version"`
		Cmds    []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		} `json:"supported_commands"`
	}
	if err := c.Call(ctx, "guest-info", nil, &info); err != nil || info.Version == "" || len(info.Cmds) < 23 {
		t.Errorf("guest-info = %+v, %v", info, err)
	}

	var qe *Error
	err = c.Call(ctx, "guest-no-such-command", nil, nil)
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Desc != "The command guest-no-such-command has not been found" {
		t.Errorf("unknown command = %v", err)
	}
	// The only guest-shutdown that is safe on the host: an invalid mode, answered with an error.
	err = c.CallNoReply(ctx, "guest-shutdown", map[string]any{"mode": "bogus"}, 10*time.Second)
	if !errors.As(err, &qe) || qe.Class != "GenericError" || !strings.HasPrefix(qe.Desc, "mode is invalid") {
		t.Errorf("guest-shutdown mode=bogus = %v", err)
	}

	if err := c.Send(ctx, []byte("@")); err != nil {
		t.Fatal(err)
	}
	r, err := c.ReadReply(ctx)
	if err != nil || r.Err == nil || r.Err.Desc != "JSON parse error, stray '@'" {
		t.Errorf("reply to @ = %+v, %v", r, err)
	}

	// A reply of ~64 MB: guest-file-read at the reference's 48 MiB cap.
	const size = 48 << 20
	path := filepath.Join(t.TempDir(), "big")
	want := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	var h int64
	if err := c.Call(ctx, "guest-file-open", map[string]any{"path": path}, &h); err != nil {
		t.Fatalf("guest-file-open: %v", err)
	}
	var rd struct {
		Count int    `json:"count"`
		Buf   []byte `json:"buf-b64"`
		EOF   bool   `json:"eof"`
	}
	if err := c.Call(ctx, "guest-file-read", map[string]any{"handle": h, "count": size}, &rd); err != nil {
		t.Fatalf("guest-file-read: %v", err)
	}
	if rd.Count != size || !bytes.Equal(rd.Buf, want) {
		t.Errorf("read %d bytes (count %d), want the file's %d", len(rd.Buf), rd.Count, size)
	}
	if err := c.Call(ctx, "guest-file-close", map[string]any{"handle": h}, nil); err != nil {
		t.Errorf("guest-file-close: %v", err)
	}

	// unix-listen serves one client at a time and re-arms on hang-up.
	if err := c.Reconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, "guest-ping", nil, nil); err != nil {
		t.Errorf("guest-ping after Reconnect: %v", err)
	}
}
