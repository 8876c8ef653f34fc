package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/qgakit/qgakit/harness/transcript"
)

// Console drives the guest's console shell on ttyS1, the harness's oracle inside the guest. The
// shell (busybox sh in the tiny image) prints no prompt and does not echo, so the harness knows
// where a command's output starts and ends only by markers it makes the shell print:
//
//	printf '__QGAKIT_%s_B__\n' NONCE; sh -c 'CMD' </dev/null 2>&1; printf '\n__QGAKIT_%s_%d__\n' NONCE $?
//
// NONCE is random per command. The formats are in the command and the nonce is an argument, so
// the markers never appear in the command text itself (should the line ever be echoed). CMD
// runs in a child shell: a syntax error, an exit or a cd in it cannot kill or change the console
// shell, and it reads /dev/null, not the harness's next line. Output is stdout and stderr
// together, exactly as printed (the line is raw: no CR is added).
type Console struct {
	conn net.Conn
	wmu  sync.Mutex // one writer at a time

	readyMu sync.Mutex
	ready   bool

	mu      sync.Mutex
	buf     []byte // received, not yet consumed by a finished command
	changed chan struct{}
	closed  bool
	tr      *transcript.Transcript
}

func newConsole(conn net.Conn) *Console {
	c := &Console{conn: conn, changed: make(chan struct{}), tr: &transcript.Transcript{}}
	go c.read()
	return c
}

func (c *Console) read() {
	b := make([]byte, 32<<10)
	for {
		n, err := c.conn.Read(b)
		c.mu.Lock()
		if n > 0 {
			c.buf = append(c.buf, b[:n]...)
			c.tr.Add(transcript.DirRecv, b[:n])
		}
		if err != nil {
			c.closed = true
		}
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (c *Console) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Transcript is the record of what was sent to and received from the console.
func (c *Console) Transcript() *transcript.Transcript { return c.tr }

// ExitError is returned by RunOK when the command exited with a non-zero status.
type ExitError struct {
	Cmd    string
	Status int
	Output string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("console: %q exited %d: %s", e.Cmd, e.Status, e.Output)
}

// Run runs cmd in the guest and returns its output (stdout and stderr) and exit status.
func (c *Console) Run(ctx context.Context, cmd string) (string, int, error) {
	p, err := c.Start(ctx, cmd)
	if err != nil {
		return "", -1, err
	}
	return p.Wait(ctx)
}

// RunOK is Run for commands that must succeed: a non-zero status is an *ExitError.
func (c *Console) RunOK(ctx context.Context, cmd string) (string, error) {
	out, rc, err := c.Run(ctx, cmd)
	if err != nil {
		return out, err
	}
	if rc != 0 {
		return out, &ExitError{Cmd: cmd, Status: rc, Output: out}
	}
	return out, nil
}

// Command is a console command that was sent; Wait collects its result. Commands run one after
// another in the guest; wait for them in the order they were started, since a Wait drops
// whatever came before its own output.
type Command struct {
	c     *Console
	cmd   string
	nonce string
}

// WaitReady waits until the console shell runs commands, by sending an empty command until one
// completes; Start does this by itself before the first command. It is needed because a guest's
// "ready" line can come before the shell has set its line raw and started reading: bytes sent
// earlier are lost, or echoed by a cooked line and never run. Later attempts have new nonces,
// so the output of an earlier one that runs late is skipped.
func (c *Console) WaitReady(ctx context.Context) error {
	c.readyMu.Lock()
	defer c.readyMu.Unlock()
	if c.ready {
		return nil
	}
	attempt := time.Second
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, attempt)
		p, err := c.send(actx, ":")
		if err == nil {
			_, _, err = p.Wait(actx)
		}
		cancel()
		if err == nil {
			c.ready = true
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, errConsoleClosed) || c.isClosed() {
			return fmt.Errorf("console: shell not answering after %d attempts: %w", n, err)
		}
		attempt = min(2*attempt, 8*time.Second)
	}
}

// Start sends cmd without waiting for it: for commands expected to block (a write to a frozen
// filesystem), whose completion a later Wait observes.
func (c *Console) Start(ctx context.Context, cmd string) (*Command, error) {
	if err := c.WaitReady(ctx); err != nil {
		return nil, err
	}
	return c.send(ctx, cmd)
}

func (c *Console) send(ctx context.Context, cmd string) (*Command, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	line := fmt.Sprintf("printf '__QGAKIT_%%s_B__\\n' %s; sh -c %s </dev/null 2>&1; printf '\\n__QGAKIT_%%s_%%d__\\n' %s $?\n",
		nonce, shellQuote(cmd), nonce)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.tr.Add(transcript.DirSend, []byte(line))
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.conn.SetWriteDeadline(timeLongAgo)
		close(done)
	})
	_, err := c.conn.Write([]byte(line))
	if !stop() {
		<-done
		_ = c.conn.SetWriteDeadline(timeZero)
	}
	if err != nil {
		if c.isClosed() {
			err = fmt.Errorf("%w (%w)", errConsoleClosed, err)
		}
		return nil, fmt.Errorf("console: send %q: %w", cmd, err)
	}
	return &Command{c: c, cmd: cmd, nonce: nonce}, nil
}

// Wait returns the command's output and exit status once its end marker has arrived.
func (p *Command) Wait(ctx context.Context) (string, int, error) {
	c := p.c
	begin := []byte("__QGAKIT_" + p.nonce + "_B__\n")
	endPrefix := []byte("\n__QGAKIT_" + p.nonce + "_")
	for {
		c.mu.Lock()
		out, rc, consumed, ok := parseMarked(c.buf, begin, endPrefix)
		if ok {
			if skipped := bytes.Index(c.buf, begin); skipped > 0 {
				c.tr.Notef("skipped %d bytes of earlier output", skipped)
			}
			c.buf = append(c.buf[:0], c.buf[consumed:]...)
			c.mu.Unlock()
			return out, rc, nil
		}
		changed, closed := c.changed, c.closed
		c.mu.Unlock()
		if closed {
			return "", -1, fmt.Errorf("console: %q: %w", p.cmd, errConsoleClosed)
		}
		select {
		case <-ctx.Done():
			return "", -1, fmt.Errorf("console: %q: %w", p.cmd, context.Cause(ctx))
		case <-changed:
		}
	}
}

var errConsoleClosed = errors.New("console closed (QEMU exited)")

// parseMarked finds a complete marked output in buf: the output, the exit status, and how many
// bytes of buf it and everything before it occupy.
func parseMarked(buf, begin, endPrefix []byte) (out string, rc, consumed int, ok bool) {
	bi := bytes.Index(buf, begin)
	if bi < 0 {
		return "", 0, 0, false
	}
	body := buf[bi+len(begin):]
	// The output may be empty, and then the end marker's leading newline directly follows the
	// begin marker: search from the start of body.
	ei := bytes.Index(body, endPrefix)
	if ei < 0 {
		return "", 0, 0, false
	}
	rest := body[ei+len(endPrefix):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	if j == 0 || len(rest) < j+3 {
		return "", 0, 0, false // status not complete yet
	}
	if string(rest[j:j+3]) != "__\n" {
		return "", 0, 0, false
	}
	status, err := strconv.Atoi(string(rest[:j]))
	if err != nil {
		return "", 0, 0, false
	}
	total := bi + len(begin) + ei + len(endPrefix) + j + 3
	return string(body[:ei]), status, total, true
}
