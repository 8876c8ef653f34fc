package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qgakit/qgakit/agent/hosttier"
)

// agentUnderTest is $QGA_BIN, which `make test` sets, or bin/qga of this checkout.
func agentUnderTest(t *testing.T) string {
	t.Helper()
	bin := hosttier.Ours().Bin
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%v: run make agent (or set QGA_BIN)", err)
	}
	return bin
}

// memClient drives an agent started with a listening socket on fd 3 (socket activation), so
// that it can be connected to before it runs and nothing polls for its socket file.
type memClient struct {
	cmd  *exec.Cmd
	conn net.Conn
	r    *bufio.Reader
}

func startMemAgent(t *testing.T, bin string) *memClient {
	t.Helper()
	// A socket path must fit in 108 bytes, which t.TempDir's may not.
	dir, err := os.MkdirTemp("", "qga-mem-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	lf, err := ul.File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// LISTEN_PID must be the agent's own pid: a shell sets it and execs the agent.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, bin,
		"-m", "unix-listen", "-p", sock, "-t", dir)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &memClient{cmd: cmd, conn: conn, r: bufio.NewReaderSize(conn, 1<<20)}
	t.Cleanup(func() {
		conn.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	return c
}

// send sends one command and returns its reply line.
func (c *memClient) send(t *testing.T, cmd string, args map[string]any) []byte {
	t.Helper()
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	req, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	c.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.conn.Write(req); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return line
}

// call sends one command and decodes its reply's return value into ret.
func (c *memClient) call(t *testing.T, cmd string, args map[string]any, ret any) {
	t.Helper()
	line := c.send(t, cmd, args)
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  any             `json:"error"`
	}
	if err := json.Unmarshal(line, &reply); err != nil || reply.Error != nil {
		t.Fatalf("%s: %v %v (%.200s)", cmd, err, reply.Error, line)
	}
	if ret != nil {
		if err := json.Unmarshal(reply.Return, ret); err != nil {
			t.Fatalf("%s: return %.200s: %v", cmd, reply.Return, err)
		}
	}
}

// parseRead reads the reply both agents give guest-file-read, by hand: a 64 MiB line is read
// many times faster than with encoding/json.
func parseRead(line []byte) (count int, data []byte, eof bool, err error) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"return": {"count": `))
	num, rest, ok2 := bytes.Cut(rest, []byte(`, "buf-b64": "`))
	b64, rest, ok3 := bytes.Cut(rest, []byte(`"`))
	switch {
	case !ok || !ok2 || !ok3:
	case string(rest) == `, "eof": true}}`+"\n":
		eof = true
	case string(rest) == `, "eof": false}}`+"\n":
	default:
		ok = false
	}
	if !ok || !ok2 || !ok3 {
		return 0, nil, false, fmt.Errorf("not a guest-file-read reply: %.200s", line)
	}
	if count, err = strconv.Atoi(string(num)); err != nil {
		return 0, nil, false, err
	}
	data = make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Decode(data, b64)
	return count, data[:n], eof, err
}

// memory is VmRSS and VmHWM of the agent, in bytes.
func (c *memClient) memory(t *testing.T) (rss, hwm int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "VmRSS:":
				rss = n << 10
			case "VmHWM:":
				hwm = n << 10
			}
		}
	}
	if rss == 0 || hwm == 0 {
		t.Fatalf("no VmRSS or VmHWM in %s", b)
	}
	return rss, hwm
}

// The bounds for our agent. A 48 MiB guest-file-read needs its 48 MiB buffer while the reply
// goes out; the rest of the peak must be small, and the memory must go back to the kernel
// after the read. Before the reply was streamed, one such read peaked at 186 MB and left
// 71 MB resident (the 48 MiB buffer pooled for the next read).
const (
	peakBound  = 80 << 20
	afterBound = 16 << 20
)

// TestFileReadMemory copies a 64 MiB file out of the agent in 48 MiB reads, as `make bench`
// does, and then once more from the start, verifying the bytes, and reports the agent's
// resident memory before, its peak, and what stays resident after. The reference's numbers
// are reported beside ours, for comparison only.
func TestFileReadMemory(t *testing.T) {
	bins := map[string]string{"ours": agentUnderTest(t)}
	// The reference takes four times as long; it is here for the comparison only.
	if _, err := os.Stat("/usr/sbin/qemu-ga"); err == nil && !testing.Short() {
		bins["reference"] = "/usr/sbin/qemu-ga"
	}
	data := make([]byte, 64<<20)
	rand.New(rand.NewSource(64)).Read(data)
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, bin := range bins {
		t.Run(name, func(t *testing.T) {
			c := startMemAgent(t, bin)
			c.call(t, "guest-ping", nil, nil)
			idle, _ := c.memory(t)

			var h int64
			c.call(t, "guest-file-open", map[string]any{"path": path}, &h)
			for pass := 0; pass < 2; pass++ {
				c.call(t, "guest-file-seek", map[string]any{"handle": h, "offset": 0, "whence": "set"}, nil)
				var total int
				for eof := false; !eof; {
					line := c.send(t, "guest-file-read", map[string]any{"handle": h, "count": 48 << 20})
					count, b, e, err := parseRead(line)
					if err != nil || len(b) != count || !bytes.Equal(b, data[total:total+len(b)]) {
						t.Fatalf("read at %d: count %d, %d bytes (%v), not the file's", total, count, len(b), err)
					}
					total += count
					eof = e
				}
				if total != len(data) {
					t.Fatalf("pass %d read %d bytes of %d", pass, total, len(data))
				}
			}
			// The agent answers in order, so the close's reply comes after whatever it did
			// once the last read was sent.
			c.call(t, "guest-file-close", map[string]any{"handle": h}, nil)
			after, peak := c.memory(t)
			t.Logf("%s: resident %.1f MB idle, peak %.1f MB, %.1f MB after 128 MiB read in 48 MiB pieces",
				name, float64(idle)/1e6, float64(peak)/1e6, float64(after)/1e6)
			if name != "ours" {
				return
			}
			if peak > peakBound {
				t.Errorf("peak resident %d MiB, bound %d MiB", peak>>20, peakBound>>20)
			}
			if after > afterBound {
				t.Errorf("%d MiB resident after the reads, bound %d MiB", after>>20, afterBound>>20)
			}
		})
	}
}
