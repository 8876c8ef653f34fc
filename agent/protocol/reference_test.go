package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The differential tests send the same bytes to our decoder and to the reference qemu-ga
// (Debian's 7.2 build, /usr/sbin/qemu-ga -m unix-listen) and compare the replies line by line.

const referenceAgent = "/usr/sbin/qemu-ga"

// hangGuard bounds how long a case may wait for the reference's replies. It is not a
// performance assertion: the slowest case (a 64 MiB string) takes about three seconds; a case
// only hits this if the reference swallowed the trailing guest-sync, which is a failure.
const hangGuard = 2 * time.Minute

// refAgent is a running reference agent with one client connection.
type refAgent struct {
	t      *testing.T
	cmd    *exec.Cmd
	conn   *net.UnixConn
	rd     *bufio.Reader
	stderr *bytes.Buffer
	sock   string
	n      int64 // last guest-sync id
}

// startReference starts qemu-ga on a listening socket we create and pass to it by systemd
// socket activation (LISTEN_FDS). Our connection is made before the agent starts and waits in
// the listen backlog, so there is nothing to poll for.
func startReference(t *testing.T) *refAgent {
	t.Helper()
	if _, err := os.Stat(referenceAgent); err != nil {
		t.Skipf("reference agent not installed (%v): install Debian's qemu-guest-agent to run the differential tests", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ln.SetUnlinkOnClose(false)
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	lf, err := ln.File()
	if err != nil {
		t.Fatalf("listener fd: %v", err)
	}
	// The shell's $$ is the agent's pid after exec, which sd_listen_fds() checks.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`,
		referenceAgent, "-m", "unix-listen", "-p", sock, "-t", dir)
	cmd.ExtraFiles = []*os.File{lf}
	stderr := &bytes.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", referenceAgent, err)
	}
	lf.Close()
	ln.Close()
	r := &refAgent{t: t, cmd: cmd, conn: conn, rd: bufio.NewReaderSize(conn, 1<<20), stderr: stderr, sock: sock}
	t.Cleanup(r.stop)
	return r
}

func (r *refAgent) stop() {
	r.conn.Close()
	if r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
	}
}

// exchange writes the chunks, then "\n" and a guest-sync, and returns the reply lines that
// come before the guest-sync's reply.
func (r *refAgent) exchange(chunks ...[]byte) ([]string, error) {
	r.n++
	sync := []byte("\n" + syncRequest(r.n) + "\n")
	want := syncReply(r.n)
	if err := r.conn.SetDeadline(time.Now().Add(hangGuard)); err != nil {
		return nil, err
	}
	// Write while reading: a reply can be larger than the socket buffer.
	werr := make(chan error, 1)
	go func() {
		for _, c := range append(slices.Clip(chunks), sync) {
			if _, err := r.conn.Write(c); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	var lines []string
	for {
		line, err := r.rd.ReadString('\n')
		if err != nil {
			// The writer ends once the connection does; why it failed, if it did, can explain
			// the read's failure.
			writeErr := <-werr
			return lines, errors.Join(
				fmt.Errorf("reading the reference's replies (agent stderr: %q): %w", r.stderr.String(), err),
				writeErr)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == want {
			break
		}
		lines = append(lines, line)
	}
	return lines, <-werr
}

// ours is what our decoder, encoder and refReply answer to the same bytes.
func ours(chunks ...[]byte) []string {
	all := append(slices.Clip(chunks), []byte("\n"+syncRequest(1)+"\n"))
	got := replies(NewDecoder(), all...)
	if len(got) > 0 && got[len(got)-1] == syncReply(1) {
		got = got[:len(got)-1]
	} else {
		got = append(got, "(no reply to the trailing guest-sync)")
	}
	return got
}

// TestReference runs every wire case against the reference: its replies must be the case's
// Want (so the expectations are the reference's), and so must ours.
func TestReference(t *testing.T) {
	ref := startReference(t)
	for _, c := range wireCases {
		t.Run(c.Name, func(t *testing.T) {
			if c.Big && testing.Short() {
				t.Skip("large input; skipped with -short")
			}
			in := []byte(c.input())
			got, err := ref.exchange(in)
			if err != nil {
				t.Fatalf("%v", err)
			}
			if !slices.Equal(got, c.Want) {
				t.Errorf("reference replies differ from the case's Want\nreference:\n%swant:\n%s", summarize(got), summarize(c.Want))
			}
			if o := ours(in); !slices.Equal(o, got) {
				t.Errorf("our replies differ from the reference's\nours:\n%sreference:\n%s", summarize(o), summarize(got))
			}
		})
	}
}

// TestReferenceSplits sends requests to the reference in two writes cut at every byte.
func TestReferenceSplits(t *testing.T) {
	ref := startReference(t)
	for _, req := range splitRequests {
		in := []byte(req)
		for i := 0; i <= len(in); i++ {
			got, err := ref.exchange(in[:i], in[i:])
			if err != nil {
				t.Fatalf("%q cut at %d: %v", req, i, err)
			}
			if o := ours(in[:i], in[i:]); !slices.Equal(o, got) {
				t.Fatalf("%q cut at %d\nours:\n%sreference:\n%s", req, i, summarize(o), summarize(got))
			}
		}
	}
}

// fragments are the pieces random inputs are made of: tokens, near-tokens and bytes that
// exercise the lexer's error paths.
var fragments = []string{
	"{", "}", "[", "]", ",", ":", " ", "\t", "\n", "\r",
	`"execute"`, `"guest-ping"`, `'guest-ping'`, `"id"`, `"a"`, `'b'`, `""`,
	"1", "0", "-2.5e3", "1e", "-", ".", "01", "18446744073709551616",
	"true", "null", "nul", "x", "E",
	`"\u00e9"`, `"\ud800"`, `"\q"`, `"\`, `"`, `'`, `\`,
	"@", "\x00", "\x01", "\x7f", "\xc3", "\xc3\xa9", "\xfe", "\xff", "\x80",
}

// TestReferenceRandom compares our replies with the reference's for random inputs made of
// fragments. Each input ends with 0xFF, which resets the reference's lexer and streamer
// whatever state the input left them in, so the trailing guest-sync is always answered.
func TestReferenceRandom(t *testing.T) {
	ref := startReference(t)
	rng := rand.New(rand.NewPCG(7, 11))
	n := 400
	if testing.Short() {
		n = 100
	}
	for i := 0; i < n; i++ {
		var sb strings.Builder
		for k := 1 + rng.IntN(24); k > 0; k-- {
			sb.WriteString(fragments[rng.IntN(len(fragments))])
		}
		sb.WriteByte(0xFF)
		in := []byte(sb.String())
		got, err := ref.exchange(in)
		if err != nil {
			t.Fatalf("input %q: %v", in, err)
		}
		if o := ours(in); !slices.Equal(o, got) {
			t.Fatalf("input %q\nours:\n%sreference:\n%s", in, summarize(o), summarize(got))
		}
	}
}

// The reference swallows requests after a nesting-limit error when the rejected input has
// more opening brackets than the limit: it restarts counting after the error, so the leftover
// brackets open a new message that takes in the following requests. Ours drops the leftover at
// the end of its line (see TestNestingErrorDoesNotSwallowNextRequest). This test pins down both
// behaviours; it is the one place where our replies knowingly differ.
func TestReferenceNestingDeviation(t *testing.T) {
	ref := startReference(t)
	in := []byte(strings.Repeat("[", 1026) + "\n" + ping + "\n]")
	got, err := ref.exchange(in)
	if err != nil {
		t.Fatalf("%v", err)
	}
	// The ping became an element of the leftover list, which the "]" closed.
	wantRef := []string{gerr("JSON nesting depth limit exceeded"), notObj}
	if !slices.Equal(got, wantRef) {
		t.Errorf("reference:\n%swant:\n%s", summarize(got), summarize(wantRef))
	}
	wantOurs := []string{gerr("JSON nesting depth limit exceeded"), pong, perr("expecting value")}
	if o := ours(in); !slices.Equal(o, wantOurs) {
		t.Errorf("ours:\n%swant:\n%s", summarize(o), summarize(wantOurs))
	}

	// The same when the leftover opens after other messages on that line.
	in = []byte(strings.Repeat("[", 1025) + "[] [\n" + ping + "\n]")
	if got, err = ref.exchange(in); err != nil {
		t.Fatalf("%v", err)
	}
	wantRef = []string{gerr("JSON nesting depth limit exceeded"), notObj, notObj}
	if !slices.Equal(got, wantRef) {
		t.Errorf("reference:\n%swant:\n%s", summarize(got), summarize(wantRef))
	}
	wantOurs = []string{gerr("JSON nesting depth limit exceeded"), notObj, pong, perr("expecting value")}
	if o := ours(in); !slices.Equal(o, wantOurs) {
		t.Errorf("ours:\n%swant:\n%s", summarize(o), summarize(wantOurs))
	}
}

// The reference keeps its parser state across unix-listen clients: a message begun by one
// client is finished by the next. Decoder.Reset exists for transports that choose otherwise.
func TestReferenceKeepsStateAcrossClients(t *testing.T) {
	ref := startReference(t)
	if _, err := ref.conn.Write([]byte("[1")); err != nil {
		t.Fatal(err)
	}
	if err := ref.conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The agent closes its side once it has read our EOF; then it accepts the next client.
	if _, err := ref.rd.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Fatalf("expected EOF from the reference after closing, got %v", err)
	}
	ref.conn.Close()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ref.sock, Net: "unix"})
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	ref.conn, ref.rd = conn, bufio.NewReader(conn)
	got, err := ref.exchange([]byte("]"))
	if err != nil {
		t.Fatal(err)
	}
	// One reply for "[1" + "]"; a reset parser would answer "]" alone with "expecting value".
	if want := []string{notObj}; !slices.Equal(got, want) {
		t.Fatalf("reference: %q, want %q", got, want)
	}
}

// TestReferenceStrayText checks our string escaping against the reference's quoted_str() on
// arbitrary bytes: a string cut off by a control character comes back raw in the "stray"
// error text, invalid UTF-8 and all.
func TestReferenceStrayText(t *testing.T) {
	ref := startReference(t)
	rng := rand.New(rand.NewPCG(3, 5))
	piece := func(b []byte) []byte {
		switch rng.IntN(6) {
		case 0: // any string byte but the quote
			c := byte(0x20 + rng.IntN(0xFE-0x20))
			if c == '"' {
				c = '#'
			}
			return append(b, c)
		case 1: // a high byte
			return append(b, byte(0x80+rng.IntN(0x7E)))
		case 2: // a code point, valid or not (surrogates, noncharacters, beyond U+10FFFF)
			cp := rng.Int32N(0x140000)
			if rng.IntN(4) == 0 {
				cp = []int32{0xD800, 0xDFFF, 0xFFFE, 0xFFFF, 0xFDD0, 0x10FFFF, 0x1FFFE, 0x110000}[rng.IntN(8)]
			}
			return append(b, 0xF0|byte(cp>>18)&0x07, 0x80|byte(cp>>12)&0x3F, 0x80|byte(cp>>6)&0x3F, 0x80|byte(cp)&0x3F)[:len(b)+1+rng.IntN(4)]
		case 3:
			return appendModUTF8(b, 0x80+rng.Int32N(0xD000))
		case 4:
			return append(b, "\xc0\x80"...)
		}
		return append(b, "ab/\\"...)
	}
	n := 300
	if testing.Short() {
		n = 60
	}
	for i := 0; i < n; i++ {
		in := []byte{'"'}
		for k := rng.IntN(16); k >= 0; k-- {
			in = piece(in)
		}
		in = append(in, 0x01)
		got, err := ref.exchange(in)
		if err != nil {
			t.Fatalf("input %q: %v", in, err)
		}
		if o := ours(in); !slices.Equal(o, got) {
			t.Fatalf("input %q\nours:\n%sreference:\n%s", in, summarize(o), summarize(got))
		}
	}
}
