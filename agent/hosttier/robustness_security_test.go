package hosttier

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The security posture, process by process: the block and allow lists hold whatever the
// request does with case, blanks, escapes or aliases, an administrator's list entry with a
// blank still blocks, a world-writable configuration file or state directory stops ours from
// starting, and the socket is 0600 whatever the umask. The oracle for "did it run" is the file
// system: every attempt names a file of its own that guest-file-open would create.

// bypass is one attempt at running a disabled guest-file-open.
type bypass struct {
	name string
	// req is the request, with %s for the path to create.
	req string
	// want is the reply; %s is the agent's disabled text for guest-file-open.
	want string
}

var bypasses = []bypass{
	{"exact name", `{"execute":"guest-file-open","arguments":{"path":"%s","mode":"w"}}`, "%s"},
	{"single quotes", `{'execute':'guest-file-open','arguments':{'path':'%s','mode':'w'}}`, "%s"},
	// The escape is decoded before the name is looked up: it is the same name, and disabled.
	{"escaped hyphens", `{"execute":"guest\u002dfile\u002dopen","arguments":{"path":"%s","mode":"w"}}`, "%s"},
	{"upper case", `{"execute":"GUEST-FILE-OPEN","arguments":{"path":"%s","mode":"w"}}`,
		NotFound("The command GUEST-FILE-OPEN has not been found")},
	{"mixed case", `{"execute":"Guest-File-Open","arguments":{"path":"%s","mode":"w"}}`,
		NotFound("The command Guest-File-Open has not been found")},
	{"leading blank", `{"execute":" guest-file-open","arguments":{"path":"%s","mode":"w"}}`,
		NotFound("The command  guest-file-open has not been found")},
	{"trailing tab", `{"execute":"guest-file-open\t","arguments":{"path":"%s","mode":"w"}}`,
		NotFound("The command guest-file-open\t has not been found")},
	{"trailing newline", `{"execute":"guest-file-open\n","arguments":{"path":"%s","mode":"w"}}`,
		NotFound("The command guest-file-open\n has not been found")},
	// A C agent that cut the name at the NUL would run guest-file-open; QEMU's parser keeps
	// U+0000 as modified UTF-8, and so the name is another one.
	{"trailing NUL", `{"execute":"guest-file-open\u0000","arguments":{"path":"%s","mode":"w"}}`,
		NotFound("The command guest-file-open\x00 has not been found")},
	{"underscores", `{"execute":"guest_file_open","arguments":{"path":"%s","mode":"w"}}`,
		NotFound("The command guest_file_open has not been found")},
	{"exec-oob", `{"exec-oob":"guest-file-open","arguments":{"path":"%s","mode":"w"}}`,
		GenErr("QMP input member 'exec-oob' is unexpected")},
	{"execute twice", `{"execute":"guest-ping","execute":"guest-file-open","arguments":{"path":"%s","mode":"w"}}`,
		ParseErr("duplicate key")},
	{"inside a list", `[{"execute":"guest-file-open","arguments":{"path":"%s","mode":"w"}}]`,
		GenErr("QMP input must be a JSON object")},
}

// tryBypasses sends every attempt and checks the replies and that no file was created.
func tryBypasses(t *testing.T, f *Fixture, disabled string) {
	t.Helper()
	for i, b := range bypasses {
		path := filepath.Join(f.Dir, fmt.Sprintf("bypass-%d", i))
		want := b.want
		if want == "%s" {
			want = disabled
		}
		if err := match(f.Call(fmt.Sprintf(b.req, path)), want); err != nil {
			t.Errorf("%s: %v", b.name, err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s: guest-file-open ran (%s exists: %v)", b.name, path, err)
		}
	}
	// Control: the same agent runs what is not disabled.
	if err := match(f.Call(syncReq("1")), Ok("1")); err != nil {
		t.Fatal(err)
	}
}

func TestBlockListCannotBeBypassed(t *testing.T) {
	disabled := NotFound("Command guest-file-open has been disabled")
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			t.Run("-b", func(t *testing.T) {
				tryBypasses(t, Start(t, a, "-b", "guest-file-open"), disabled)
			})
			// 7.2's deprecated spellings of the same list.
			t.Run("--blacklist", func(t *testing.T) {
				tryBypasses(t, Start(t, a, "--blacklist", "guest-file-open"), disabled)
			})
			for _, key := range []string{"block-rpcs", "blacklist"} {
				t.Run("config "+key, func(t *testing.T) {
					f := New(t, a)
					conf := filepath.Join(f.Dir, "qemu-ga.conf")
					if err := os.WriteFile(conf, []byte("[general]\n"+key+"=guest-file-open\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					f.LaunchWithConfig(conf)
					tryBypasses(t, f, disabled)
				})
			}
		})
	}
}

// The reference splits a list at commas only, so "guest-ping, guest-file-open" blocks
// " guest-file-open", which is no command, and guest-file-open runs. Ours takes list entries
// without their blanks (and case), which fails closed.
func TestBlockListEntriesWithBlanks(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			f := Start(t, a, "-b", "guest-ping, guest-file-open,\tGUEST-GET-TIME")
			path := filepath.Join(f.Dir, "listed")
			r := f.Call(fileOpen(path, "w"))
			_, statErr := os.Stat(path)
			if a.Reference {
				if r.Obj["error"] != nil || statErr != nil {
					t.Fatalf("the reference refused guest-file-open (%q, %v): the claim that it does not block it is stale", r.Raw, statErr)
				}
				return
			}
			if err := match(r, NotFound("Command guest-file-open has been disabled")); err != nil || !os.IsNotExist(statErr) {
				t.Fatalf("ours: %v, file: %v", err, statErr)
			}
			if err := match(f.Call(`{"execute":"guest-get-time"}`), NotFound("Command guest-get-time has been disabled")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Ours only: the allow list (qemu-ga 8.1's -a, which 7.2 lacks) holds the same way.
func TestAllowListCannotBeBypassed(t *testing.T) {
	f := Start(t, Ours(), "-a", "guest-sync,guest-ping")
	tryBypasses(t, f, NotFound("Command guest-file-open has been disabled"))
}

// Ours refuses to start with a configuration file or a state directory that any user may
// write: the one could point the agent's channel, state and fsfreeze hook anywhere, the other
// could plant qga.state.isfrozen to lock the agent in the frozen state, or rewind the handle
// counter. The reference starts with both.
func TestWorldWritableConfigAndStateDir(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			dir := t.TempDir()
			conf := filepath.Join(dir, "qemu-ga.conf")
			if err := os.WriteFile(conf, []byte("[general]\nverbose=true\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			// Explicitly: the umask would take the write bits away.
			if err := os.Chmod(conf, 0o666); err != nil {
				t.Fatal(err)
			}
			out, errOut, code := run(t, a.Bin, []string{"QGA_CONF=" + conf}, "-D")
			if a.Reference {
				if code != 0 || !strings.Contains(out, "verbose=true") {
					t.Errorf("the reference with a world-writable config: %d %q %q", code, out, errOut)
				}
			} else if code != 1 || !strings.Contains(errOut,
				"error loading configuration from path: "+conf+", refusing a world-writable configuration file (mode 0666)") {
				t.Errorf("world-writable config: %d %q", code, errOut)
			}

			for _, mode := range []os.FileMode{0o777, 0o777 | os.ModeSticky} {
				f := New(t, a)
				if err := os.Chmod(f.StateDir, mode); err != nil {
					t.Fatal(err)
				}
				if a.Reference {
					f.Launch()
					f.Connect()
					if err := match(f.Call(ping), pong); err != nil {
						t.Errorf("the reference with a %v state dir: %v", mode, err)
					}
					continue
				}
				_, errOut, code := run(t, a.Bin, noConf, "-m", "unix-listen", "-p", f.Sock, "-t", f.StateDir)
				if code != 1 || !strings.Contains(errOut, "failed to load persistent state: open state directory "+f.StateDir+
					": refusing a world-writable directory") {
					t.Errorf("%v state dir: %d %q", mode, code, errOut)
				}
				if _, err := os.Stat(f.Sock); !os.IsNotExist(err) {
					t.Errorf("%v state dir: the socket was created anyway (%v)", mode, err)
				}
			}
		})
	}
}

// Under umask 0 the reference's socket is 0777, open to every local user; ours is 0600.
// (TestUnixSocketMode checks ours under the test's own umask.)
func TestSocketModeUnderUmaskZero(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			f := New(t, a)
			cmd := exec.Command("/bin/sh", "-c", `umask 0; exec "$0" "$@"`, a.Bin, "-m", "unix-listen", "-p", f.Sock, "-t", f.StateDir)
			cmd.Env = append(os.Environ(), noConf...)
			f.startCmd(cmd)
			st, err := os.Stat(f.Sock)
			if err != nil {
				t.Fatal(err)
			}
			want := os.FileMode(0o600)
			if a.Reference {
				want = 0o777
			}
			if st.Mode().Perm() != want {
				t.Fatalf("socket mode %v, want %v", st.Mode().Perm(), want)
			}
		})
	}
}
