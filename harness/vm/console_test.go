package vm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// shellConsole connects a Console to a real busybox sh (the guest's shell) over a socketpair,
// the way the guest's ttyS1 shell reads and writes its line.
func shellConsole(t *testing.T) *Console {
	t.Helper()
	return lateShellConsole(t, 0)
}

// lateShellConsole is shellConsole with a shell that starts only after the first lost lines
// have arrived, echoed and never run: what a guest does while its line is not raw yet.
func lateShellConsole(t *testing.T, lost int) *Console {
	t.Helper()
	sh := "/bin/sh"
	if bb, err := exec.LookPath("busybox"); err == nil {
		sh = bb
	}
	host, guest, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{}
	if strings.HasSuffix(sh, "busybox") {
		args = append(args, "sh")
	}
	cmd := exec.Command(sh, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = guest, guest, guest
	started := make(chan error, 1)
	go func() {
		// Byte by byte, so that nothing after the lost lines is consumed here.
		b := make([]byte, 1)
		var line []byte
		for n := 0; n < lost; {
			if _, err := guest.Read(b); err != nil {
				started <- err
				return
			}
			line = append(line, b[0])
			if b[0] == '\n' {
				guest.Write(append([]byte("echo of a cooked line: "), line[3:]...))
				line, n = nil, n+1
			}
		}
		started <- cmd.Start()
		guest.Close()
	}()
	c := newConsole(host)
	t.Cleanup(func() {
		host.Close()
		if err := <-started; err == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return c
}

func TestConsoleWaitsForALateShell(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := lateShellConsole(t, 2)
	out, err := c.RunOK(ctx, "echo first")
	if err != nil || out != "first\n" {
		t.Errorf("first command = %q, %v", out, err)
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Errorf("WaitReady once ready: %v", err)
	}
}

func TestConsoleRun(t *testing.T) {
	c := shellConsole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cases := []struct {
		cmd  string
		out  string
		code int
	}{
		{"echo hello", "hello\n", 0},
		{"printf 'no newline'", "no newline", 0},
		{"true", "", 0},
		{"printf ''; exit 7", "", 7},
		{"echo out; echo err >&2; false", "out\nerr\n", 1},
		{`echo "it's $((6*7))"`, "it's 42\n", 0},
		{"cat", "", 0},                               // reads /dev/null, not the harness's next line
		{"if then", "", 2},                           // a syntax error fails the command, not the console
		{"printf 'a\\n\\nb\\n\\n'", "a\n\nb\n\n", 0}, // blank lines and trailing newlines are output
		{"cd /; pwd", "/\n", 0},
		{"pwd", "", -1}, // checked below: the cd did not stick
	}
	wd, _ := os.Getwd()
	for _, tc := range cases {
		out, code, err := c.Run(ctx, tc.cmd)
		if err != nil {
			t.Fatalf("%q: %v", tc.cmd, err)
		}
		if tc.code == -1 {
			if out != wd+"\n" {
				t.Errorf("pwd after a cd in an earlier command = %q, want %q", out, wd)
			}
			continue
		}
		if tc.cmd == "if then" {
			if code == 0 || !strings.Contains(out, "syntax") {
				t.Errorf("syntax error: %q, %d", out, code)
			}
			continue
		}
		if out != tc.out || code != tc.code {
			t.Errorf("%q = %q, %d; want %q, %d", tc.cmd, out, code, tc.out, tc.code)
		}
	}
	if _, err := c.RunOK(ctx, "exit 3"); err == nil {
		t.Error("RunOK of exit 3 succeeded")
	} else {
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Status != 3 {
			t.Errorf("RunOK error = %v", err)
		}
	}
}

func TestConsoleBlockedCommandAndStaleOutput(t *testing.T) {
	c := shellConsole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fifo := t.TempDir() + "/gate"
	if err := exec.Command("mkfifo", fifo).Run(); err != nil {
		t.Skip("no mkfifo")
	}
	// A command that blocks until the test opens the gate, like a write to a frozen filesystem.
	p, err := c.Start(ctx, "read x < "+fifo+"; echo got $x")
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, _, err := p.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked command's Wait = %v, want a deadline error", err)
	}
	if err := os.WriteFile(fifo, []byte("thawed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code, err := p.Wait(ctx)
	if err != nil || out != "got thawed\n" || code != 0 {
		t.Errorf("Wait after the gate opened = %q, %d, %v", out, code, err)
	}

	// Output of a command nobody waits for is skipped by the next one.
	if _, err := c.Start(ctx, "echo abandoned"); err != nil {
		t.Fatal(err)
	}
	out, _, err = c.Run(ctx, "echo mine")
	if err != nil || out != "mine\n" {
		t.Errorf("Run after an abandoned command = %q, %v", out, err)
	}
	if !strings.Contains(transcriptOf(c), "skipped") {
		t.Error("skipped output not noted in the transcript")
	}
}

func transcriptOf(c *Console) string {
	var sb strings.Builder
	c.Transcript().WriteTo(&sb)
	return sb.String()
}

func TestConsoleClosed(t *testing.T) {
	host, guest, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	c := newConsole(host)
	defer host.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := c.send(ctx, "echo x")
	if err != nil {
		t.Fatal(err)
	}
	guest.Close()
	if _, _, err := p.Wait(ctx); !errors.Is(err, errConsoleClosed) {
		t.Errorf("Wait on a closed console = %v", err)
	}
}

func TestParseMarked(t *testing.T) {
	begin, end := []byte("__QGAKIT_n_B__\n"), []byte("\n__QGAKIT_n_")
	for _, tc := range []struct {
		buf   string
		ok    bool
		out   string
		rc    int
		taken int
	}{
		{"junk__QGAKIT_n_B__\nhi\n\n__QGAKIT_n_0__\nrest", true, "hi\n", 0, 38},
		{"__QGAKIT_n_B__\n\n__QGAKIT_n_127__\n", true, "", 127, 33},
		{"__QGAKIT_n_B__\nhi\n\n__QGAKIT_n_12", false, "", 0, 0},  // status still arriving
		{"__QGAKIT_n_B__\nhi\n\n__QGAKIT_n_1__", false, "", 0, 0}, // no final newline yet
		{"__QGAKIT_m_B__\nhi\n\n__QGAKIT_m_0__\n", false, "", 0, 0},
		{"hi\n\n__QGAKIT_n_0__\n", false, "", 0, 0}, // end without begin
	} {
		out, rc, taken, ok := parseMarked([]byte(tc.buf), begin, end)
		if ok != tc.ok || out != tc.out || rc != tc.rc || taken != tc.taken {
			t.Errorf("parseMarked(%q) = %q, %d, %d, %v", tc.buf, out, rc, taken, ok)
		}
	}
}

func TestSerialLogWait(t *testing.T) {
	host, guest, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(t.TempDir() + "/serial0.log")
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	s := newSerialLog(f, &logged, "t ttyS0:")
	done := make(chan struct{})
	go func() { s.run(host); close(done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	guest.Write([]byte("boot\r\nTINY: REA"))
	guest.Write([]byte("DY\nmore\n"))
	end, err := s.wait(ctx, 0, "TINY: READY")
	if err != nil || end != int64(len("boot\r\nTINY: READY")) {
		t.Fatalf("wait READY = %d, %v", end, err)
	}
	// Earlier output is found from 0, but not after a later mark.
	if _, err := s.wait(ctx, 0, "boot"); err != nil {
		t.Errorf("wait for earlier output: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if _, err := s.wait(short, end, "boot"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait past the mark found old output: %v", err)
	}
	guest.Close()
	<-done
	if _, err := s.wait(ctx, s.mark(), "never"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("wait on a closed line = %v", err)
	}
	b, _ := os.ReadFile(f.Name())
	if string(b) != "boot\r\nTINY: READY\nmore\n" {
		t.Errorf("serial0.log = %q", b)
	}
	if !strings.Contains(logged.String(), "t ttyS0: TINY: READY\n") || strings.Contains(logged.String(), "\r") {
		t.Errorf("log lines = %q", logged.String())
	}
}
