package hosttier

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func fileOpen(path, mode string) string {
	if mode == "" {
		return fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q}}`, path)
	}
	return fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q,"mode":%q}}`, path, mode)
}

func fileCall(cmd, handle, extra string) string {
	return fmt.Sprintf(`{"execute":"guest-file-%s","arguments":{"handle":%s%s}}`, cmd, handle, extra)
}

// fileIs checks a file's content.
func fileIs(name, want string) func(t testing.TB, f *Fixture, _ []Reply) {
	return func(t testing.TB, f *Fixture, _ []Reply) {
		b, err := os.ReadFile(filepath.Join(f.Dir, name))
		if err != nil || string(b) != want {
			t.Fatalf("%s holds %q (%v), want %q", name, b, err, want)
		}
	}
}

func writeFile(name, content string) func(t testing.TB, f *Fixture) {
	return func(t testing.TB, f *Fixture) {
		if err := os.WriteFile(filepath.Join(f.Dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const hello = "Hello World!\n\x00"

func init() {
	cases = append(cases,
		// test-qga.c's file-ops, plus the handle numbering.
		Case{Name: "file/ops", Steps: []Step{
			{Send: fileOpen("{{dir}}/foo", "w+"), Want: []string{Ok("1000")}, Save: "h"},
			{Send: fileCall("write", "{{h}}", `,"buf-b64":"`+b64(hello)+`"`), Want: []string{Ok(`{"count": 14, "eof": false}`)}},
			{Send: fileCall("flush", "{{h}}", ""), Want: []string{Ok("{}")}},
			{Send: fileCall("close", "{{h}}", ""), Want: []string{Ok("{}")}, Check: fileIs("foo", hello)},
			{Send: fileOpen("{{dir}}/foo", "r"), Want: []string{Ok("1001")}, Save: "h"},
			{Send: fileCall("read", "{{h}}", ""), Want: []string{Ok(`{"count": 14, "buf-b64": "` + b64(hello) + `", "eof": true}`)}},
			{Send: fileCall("read", "{{h}}", ""), Want: []string{Ok(`{"count": 0, "buf-b64": "", "eof": true}`)}},
			{Send: fileCall("seek", "{{h}}", `,"offset":6,"whence":"set"`), Want: []string{Ok(`{"position": 6, "eof": false}`)}},
			{Send: fileCall("read", "{{h}}", ""), Want: []string{Ok(`{"count": 8, "buf-b64": "` + b64("World!\n\x00") + `", "eof": true}`)}},
			{Send: fileCall("seek", "{{h}}", `,"offset":-3,"whence":2`), Want: []string{Ok(`{"position": 11, "eof": false}`)}},
			{Send: fileCall("read", "{{h}}", `,"count":2`), Want: []string{Ok(`{"count": 2, "buf-b64": "` + b64("!\n") + `", "eof": false}`)}},
			{Send: fileCall("seek", "{{h}}", `,"offset":-1,"whence":"cur"`), Want: []string{Ok(`{"position": 12, "eof": false}`)}},
			{Send: fileCall("seek", "{{h}}", `,"offset":0,"whence":0`), Want: []string{Ok(`{"position": 0, "eof": false}`)}},
			{Send: fileCall("close", "{{h}}", ""), Want: []string{Ok("{}")}},
			{Send: fileCall("close", "{{h}}", ""), Want: []string{GenErr("handle '{{h}}' has not been found")}},
		}},
		// test-qga.c's file-write-read: a read right after a write flushes first.
		Case{Name: "file/write then read", Steps: []Step{
			{Send: fileOpen("{{dir}}/foo", "w+"), N: 1, Save: "h"},
			{Send: fileCall("write", "{{h}}", `,"buf-b64":"`+b64(hello)+`"`), Want: []string{Ok(`{"count": 14, "eof": false}`)}},
			{Send: fileCall("read", "{{h}}", ""), Want: []string{Ok(`{"count": 0, "buf-b64": "", "eof": true}`)}},
			{Send: fileCall("seek", "{{h}}", `,"offset":0,"whence":"set"`), Want: []string{Ok(`{"position": 0, "eof": false}`)}},
			{Send: fileCall("read", "{{h}}", ""), Want: []string{Ok(`{"count": 14, "buf-b64": "` + b64(hello) + `", "eof": true}`)}},
		}},
		Case{Name: "file/modes", Steps: []Step{
			// r needs the file; w truncates; a appends; + allows both directions.
			{Do: writeFile("f", "abc"), Send: fileOpen("{{dir}}/f", "r"), N: 1, Save: "r"},
			{Send: fileCall("write", "{{r}}", `,"buf-b64":"`+b64("x")+`"`), N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
				// Reading-only stdio streams fail the write at flush or at once; either way
				// the file must not change.
				fileIs("f", "abc")(t, f, nil)
			}},
			{Send: fileOpen("{{dir}}/f", "a"), N: 1, Save: "a"},
			{Send: fileCall("write", "{{a}}", `,"buf-b64":"`+b64("de")+`"`), Want: []string{Ok(`{"count": 2, "eof": false}`)}},
			{Send: fileCall("close", "{{a}}", ""), Want: []string{Ok("{}")}, Check: fileIs("f", "abcde")},
			{Send: fileOpen("{{dir}}/f", "r+"), N: 1, Save: "rp"},
			{Send: fileCall("write", "{{rp}}", `,"buf-b64":"`+b64("X")+`"`), Want: []string{Ok(`{"count": 1, "eof": false}`)}},
			{Send: fileCall("read", "{{rp}}", ""), Want: []string{Ok(`{"count": 4, "buf-b64": "` + b64("bcde") + `", "eof": true}`)}},
			{Send: fileCall("close", "{{rp}}", ""), Want: []string{Ok("{}")}, Check: fileIs("f", "Xbcde")},
			{Send: fileOpen("{{dir}}/f", "a+"), N: 1, Save: "ap"},
			{Send: fileCall("read", "{{ap}}", ""), Want: []string{Ok(`{"count": 5, "buf-b64": "` + b64("Xbcde") + `", "eof": true}`)}},
			{Send: fileCall("write", "{{ap}}", `,"buf-b64":"`+b64("Z")+`"`), Want: []string{Ok(`{"count": 1, "eof": false}`)}},
			{Send: fileCall("close", "{{ap}}", ""), Want: []string{Ok("{}")}, Check: fileIs("f", "XbcdeZ")},
			{Send: fileOpen("{{dir}}/f", "w"), N: 1, Save: "w", Check: fileIs("f", "")},
			{Send: fileCall("close", "{{w}}", ""), Want: []string{Ok("{}")}},
			// Every mode of the reference's table opens (creating where it may).
			{Send: fileOpen("{{dir}}/m1", "wb") + fileOpen("{{dir}}/m2", "ab") + fileOpen("{{dir}}/m1", "rb") +
				fileOpen("{{dir}}/m1", "rb+") + fileOpen("{{dir}}/m1", "r+b") + fileOpen("{{dir}}/m3", "wb+") +
				fileOpen("{{dir}}/m3", "w+b") + fileOpen("{{dir}}/m4", "ab+") + fileOpen("{{dir}}/m4", "a+b") +
				fileOpen("{{dir}}/m5", "w+") + fileOpen("{{dir}}/m1", ""),
				N: 11, Check: func(t testing.TB, f *Fixture, r []Reply) {
					for i, rep := range r {
						if rep.Obj["error"] != nil {
							t.Errorf("open %d: %q", i, rep.Raw)
						}
					}
					st, err := os.Stat(filepath.Join(f.Dir, "m1"))
					if err != nil || st.Mode().Perm() != 0o666 {
						t.Errorf("created file mode %v (%v), want 0666 regardless of umask", st.Mode(), err)
					}
				}},
		}},
		Case{Name: "file/errors", Steps: []Step{
			{Send: fileOpen("/nonexistent/x", ""), Want: []string{GenErr("failed to open file '/nonexistent/x' (mode: 'r'): No such file or directory")}},
			{Send: fileOpen("{{dir}}/x", "q"), Want: []string{GenErr("invalid file open mode 'q'")}},
			{Send: fileOpen("{{dir}}", "w"), Want: []string{GenErr("failed to open file '{{dir}}' (mode: 'w'): Is a directory")}},
			{Send: fileCall("read", "999", ""), Want: []string{GenErr("handle '999' has not been found")}},
			{Send: fileCall("write", "999", `,"buf-b64":""`), Want: []string{GenErr("handle '999' has not been found")}},
			{Send: fileCall("seek", "999", `,"offset":0,"whence":0`), Want: []string{GenErr("handle '999' has not been found")}},
			{Send: fileCall("flush", "999", ""), Want: []string{GenErr("handle '999' has not been found")}},
			{Send: fileCall("close", "999", ""), Want: []string{GenErr("handle '999' has not been found")}},
			{Do: writeFile("e", "data"), Send: fileOpen("{{dir}}/e", "r+"), Want: []string{Ok("1000")}, Save: "h"},
			{Send: fileCall("read", "{{h}}", `,"count":-1`), Want: []string{GenErr("value '-1' is invalid for argument count")}},
			{Send: fileCall("read", "{{h}}", `,"count":50331649`), Want: []string{GenErr("value '50331649' is invalid for argument count")}},
			{Send: fileCall("write", "{{h}}", `,"buf-b64":"@@@"`), Want: []string{GenErr("Base64 data contains invalid characters")}},
			{Send: fileCall("write", "{{h}}", `,"buf-b64":"`+b64("ab")+`","count":3`), Want: []string{GenErr("value '3' is invalid for argument count")}},
			{Send: fileCall("write", "{{h}}", `,"buf-b64":"`+b64("ab")+`","count":-1`), Want: []string{GenErr("value '-1' is invalid for argument count")}},
			{Send: fileCall("seek", "{{h}}", `,"offset":0,"whence":5`), Want: []string{GenErr("invalid whence code 5")}},
			{Send: fileCall("seek", "{{h}}", `,"offset":-10,"whence":"set"`), Want: []string{GenErr("failed to seek file: Invalid argument")}},
			{Send: fileCall("read", "{{h}}", `,"count":0`), Want: []string{Ok(`{"count": 0, "buf-b64": "", "eof": false}`)}},
			{Send: fileCall("close", "{{h}}", ""), Want: []string{Ok("{}")}},
		}},
		// Handles count up from 1000 and are never reused, even by a new agent process.
		Case{Name: "file/handles persist across restart", Steps: []Step{
			{Send: fileOpen("{{dir}}/a", "w"), Want: []string{Ok("1000")}},
			{Send: fileOpen("/nonexistent/a", "r"), N: 1},
			{Send: fileOpen("{{dir}}/a", "r"), Want: []string{Ok("1001")}},
			{Do: func(t testing.TB, f *Fixture) { f.Restart() }, Send: fileOpen("{{dir}}/a", "r"), Want: []string{Ok("1002")}},
			{Send: fileCall("close", "1000", ""), Want: []string{GenErr("handle '1000' has not been found")}},
		}},
	)
}
