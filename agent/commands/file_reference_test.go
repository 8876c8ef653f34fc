package commands

import (
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch/reftest"
)

// The same guest-file-* sequences run against qemu-ga 7.2 and against this agent, in the same
// directory and from the same first handle, and every reply must be the same: return values
// (counts, eof, positions, data, handles) and error texts.

// ftPath names a file of the scratch directory in a step's arguments.
type ftPath string

// ftHandle stands for the handle of the k-th successful guest-file-open of the script
// (negative: counted from the latest).
type ftHandle int

type ftScriptCtx struct {
	t       *testing.T
	dir     string
	handles []int64
	fds     map[string]int
}

type ftStep struct {
	fs   func(c *ftScriptCtx) // a change made by the test itself, between commands
	cmd  string
	args map[string]any
}

func ftDo(cmd string, args map[string]any) ftStep { return ftStep{cmd: cmd, args: args} }

func ftFS(f func(c *ftScriptCtx)) ftStep { return ftStep{fs: f} }

func ftCreate(name, content string) ftStep {
	return ftFS(func(c *ftScriptCtx) { ftWriteFile(c.t, filepath.Join(c.dir, name), content) })
}

func (c *ftScriptCtx) resolve(v any) any {
	switch x := v.(type) {
	case ftPath:
		return filepath.Join(c.dir, string(x))
	case ftHandle:
		i := int(x)
		if i < 0 {
			i += len(c.handles)
		}
		if i < 0 || i >= len(c.handles) {
			c.t.Fatalf("script uses handle %d of %d", int(x), len(c.handles))
		}
		return c.handles[i]
	}
	return v
}

// runFileScript runs steps through exec and renders each reply as one comparable line.
func runFileScript(t *testing.T, dir string, steps []ftStep, exec func(cmd string, args map[string]any) reftest.Reply) []string {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &ftScriptCtx{t: t, dir: dir, fds: map[string]int{}}
	defer func() {
		for _, fd := range c.fds {
			unix.Close(fd)
		}
	}()
	var out []string
	for _, s := range steps {
		if s.fs != nil {
			s.fs(c)
			continue
		}
		var args map[string]any
		if s.args != nil {
			args = map[string]any{}
			for k, v := range s.args {
				args[k] = c.resolve(v)
			}
		}
		r := exec(s.cmd, args)
		line := s.cmd + " "
		if r.Err != nil {
			line += "error " + r.Err.Class + ": " + r.Err.Desc
		} else {
			b, err := json.Marshal(r.Return)
			if err != nil {
				t.Fatal(err)
			}
			line += string(b)
			if h, ok := r.Return.(int64); ok && s.cmd == "guest-file-open" {
				c.handles = append(c.handles, h)
			}
		}
		out = append(out, line)
	}
	return out
}

func compareFileScript(t *testing.T, name string, steps []ftStep) {
	t.Run(name, func(t *testing.T) {
		ref := reftest.Start(t, "")
		dir := filepath.Join(ref.Dir, "scratch")
		want := runFileScript(t, dir, steps, func(cmd string, args map[string]any) reftest.Reply {
			return ref.Execute(t, cmd, args)
		})
		ours := newFTAgent(t)
		got := runFileScript(t, dir, steps, func(cmd string, args map[string]any) reftest.Reply {
			return ours.do(t, cmd, args)
		})
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				g := "<missing>"
				if i < len(got) {
					g = got[i]
				}
				t.Errorf("step %d:\nreference %s\n     ours %s", i, want[i], g)
			}
		}
	})
}

func i64(n int) int64 { return int64(n) }

func TestFileCommandsMatchReference(t *testing.T) {
	h := ftHandle(-1)
	read := func(count int) ftStep {
		args := map[string]any{"handle": h}
		if count >= 0 {
			args["count"] = i64(count)
		}
		return ftDo("guest-file-read", args)
	}
	write := func(b64 string) ftStep {
		return ftDo("guest-file-write", map[string]any{"handle": h, "buf-b64": b64})
	}
	writeN := func(b64 string, n int) ftStep {
		return ftDo("guest-file-write", map[string]any{"handle": h, "buf-b64": b64, "count": i64(n)})
	}
	seek := func(off int, whence any) ftStep {
		return ftDo("guest-file-seek", map[string]any{"handle": h, "offset": i64(off), "whence": whence})
	}
	open := func(name, mode string) ftStep {
		args := map[string]any{"path": ftPath(name)}
		if mode != "" {
			args["mode"] = mode
		}
		return ftDo("guest-file-open", args)
	}
	closeH := ftDo("guest-file-close", map[string]any{"handle": h})
	flush := ftDo("guest-file-flush", map[string]any{"handle": h})

	compareFileScript(t, "read-seek-eof", []ftStep{
		ftCreate("a", "0123456789"),
		open("a", ""),
		read(10), read(10), seek(0, "set"), read(0), read(4), read(6), read(1),
		seek(20, i64(0)), read(-1), read(0), seek(-5, "end"), read(100),
		seek(-100, i64(1)), seek(3, i64(3)), seek(3, i64(-1)),
		write("eHk="), read(3),
		ftDo("guest-file-read", map[string]any{"handle": h, "count": i64(-1)}),
		ftDo("guest-file-read", map[string]any{"handle": h, "count": i64(48<<20 + 1)}),
		ftDo("guest-file-read", map[string]any{"handle": h, "count": i64(48 << 20)}),
		closeH, closeH, flush, read(1), write("$$"), seek(0, i64(9)),
	})
	compareFileScript(t, "write-then-read", []ftStep{
		open("b", "w+"),
		write("aGVsbG8="), read(-1),
		writeN("WFla", 2), writeN("WFla", 4), writeN("WFla", -1), writeN("WFla", 0),
		write("ab$c"), write("QUJDRA"), write("QU\nJD"), write("QQ==QUJD"), write("Q=Q=====Q"), write(""),
		seek(0, "cur"), flush, seek(0, "set"), read(3), write("X18="), seek(0, "cur"),
		seek(0, "set"), read(100), closeH,
		open("b", "r"), read(-1), closeH,
	})
	compareFileScript(t, "append-modes", []ftStep{
		ftCreate("c", "0123456789"),
		open("c", "a"), seek(0, "cur"), read(-1), write("QUI="), seek(0, "cur"), seek(0, "set"),
		write("Q0Q="), seek(0, "cur"), closeH,
		ftCreate("d", "0123456789"),
		open("d", "a+"), seek(0, "cur"), read(3), write("QUI="), seek(0, "cur"), read(-1),
		seek(1, "set"), read(2), write("Q0Q="), seek(0, "cur"), seek(0, "set"), read(-1), closeH,
		open("d", "ab+"), read(-1), closeH,
	})
	compareFileScript(t, "other-modes", []ftStep{
		ftCreate("e", "0123456789"),
		open("e", "w"), read(-1), seek(0, "cur"), write("eHl6"), seek(0, "end"), closeH,
		open("e", "rb"), read(-1), closeH,
		ftCreate("f", "0123456789"),
		open("f", "r+"), write("YWJj"), read(3), seek(0, "cur"), seek(0, "set"), read(100), closeH,
		open("f", "r+b"), read(2), write("Wg=="), read(2), seek(0, "set"), read(100), closeH,
		open("f", "wb+"), read(-1), closeH,
		open("g", "a+b"), write("Zw=="), seek(0, "set"), read(-1), closeH,
		open("h", "w+b"), closeH,
		open("f", "rw"), open("f", "R"), open("f", " r"), open("f", "r "), open("f", ""),
		open("missing", ""), open("missing", "r+"), open("missing", "rb+"),
		open(".", "w"), open(".", "r+"), open(".", "a"),
		open(".", "r"), read(-1), closeH,
		open("new", "w"), open("new", "w"), closeH,
	})

	big := make([]byte, 10000)
	rand.New(rand.NewSource(3)).Read(big)
	compareFileScript(t, "block-boundaries", []ftStep{
		ftCreate("big", string(big)),
		open("big", ""),
		read(4095), read(1), read(4097), read(8192), read(8192),
		seek(0, "set"), read(10000), read(1),
		seek(4096, "set"), read(5904), read(0), read(1),
		seek(-1, "end"), read(4096), seek(0, "set"), read(-1), read(-1), read(-1), read(-1), closeH,
	})

	compareFileScript(t, "fifo", []ftStep{
		ftFS(func(c *ftScriptCtx) {
			if err := unix.Mkfifo(filepath.Join(c.dir, "p"), 0o600); err != nil {
				c.t.Fatal(err)
			}
		}),
		open("p", "r"), read(-1),
		ftFS(func(c *ftScriptCtx) {
			fd, err := unix.Open(filepath.Join(c.dir, "p"), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				c.t.Fatal(err)
			}
			c.fds["p"] = fd
		}),
		read(-1),
		ftFS(func(c *ftScriptCtx) {
			if _, err := unix.Write(c.fds["p"], []byte("hello")); err != nil {
				c.t.Fatal(err)
			}
		}),
		read(5), seek(0, "cur"), write("QUJD"),
		ftFS(func(c *ftScriptCtx) { unix.Close(c.fds["p"]); delete(c.fds, "p") }),
		read(-1), closeH,
		ftFS(func(c *ftScriptCtx) {
			if err := unix.Mkfifo(filepath.Join(c.dir, "q"), 0o600); err != nil {
				c.t.Fatal(err)
			}
		}),
		open("q", "r+"), write("QUJD"), read(2), write("QUJD"), write("QUJD"), flush, closeH,
	})

	// Random base64 texts over the accepted alphabet, padding and newlines anywhere: the
	// decoded bytes must be GLib's.
	rng := rand.New(rand.NewSource(4))
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/====\n\n"
	steps := []ftStep{open("b64", "w+")}
	for i := 0; i < 150; i++ {
		var b strings.Builder
		for n := rng.Intn(24); n > 0; n-- {
			b.WriteByte(alphabet[rng.Intn(len(alphabet))])
		}
		steps = append(steps, seek(0, "set"), write(b.String()), seek(0, "set"), read(64))
	}
	steps = append(steps, write("QUJD\x00"), write("QUJD\t"), closeH)
	compareFileScript(t, "base64", steps)
}
