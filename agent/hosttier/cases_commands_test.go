package hosttier

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/qgakit/qgakit/schema"
)

// infoEntries decodes guest-info's supported_commands into name → entry.
func infoEntries(t testing.TB, r Reply) map[string]map[string]any {
	t.Helper()
	ret, ok := r.Return().(map[string]any)
	if !ok {
		t.Fatalf("guest-info returned %q", abbrev(r.Raw))
	}
	list, ok := ret["supported_commands"].([]any)
	if !ok {
		t.Fatalf("no supported_commands in %q", abbrev(r.Raw))
	}
	out := map[string]map[string]any{}
	for _, e := range list {
		m, _ := e.(map[string]any)
		name, _ := m["name"].(string)
		if name == "" || len(m) != 3 {
			t.Fatalf("bad entry %v", e)
		}
		if _, dup := out[name]; dup {
			t.Fatalf("%s listed twice", name)
		}
		out[name] = m
	}
	return out
}

const frozenMsg = ": the agent is in frozen state"

func init() {
	cases = append(cases,
		Case{Name: "cmd/guest-sync", Steps: []Step{
			{Send: syncReq("-9223372036854775808"), Want: []string{Ok("-9223372036854775808")}},
			{Send: syncReq("9223372036854775807"), Want: []string{Ok("9223372036854775807")}},
		}},
		Case{Name: "cmd/guest-sync-delimited", Steps: []Step{
			{Send: `{"execute":"guest-sync-delimited","arguments":{"id":42}}`, Want: []string{"\xff" + Ok("42")}},
			// Only that reply carries the sentinel.
			{Send: ping, Want: []string{pong}},
			{Send: `{"execute":"guest-sync-delimited","arguments":{"id":"x"}}`,
				Want: []string{GenErr("Invalid parameter type for 'id', expected: integer")}},
		}},
		Case{Name: "cmd/guest-ping", Steps: []Step{{Send: ping, Want: []string{pong}}}},
		Case{Name: "cmd/guest-info", Steps: []Step{
			{Send: `{"execute":"guest-info"}`, N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
				entries := infoEntries(t, r[0])
				s := schema.MustLoad()
				for _, name := range s.CommandNames() {
					e, ok := entries[name]
					if !ok {
						t.Fatalf("%s missing from guest-info", name)
					}
					if e["success-response"] != s.Command(name).SuccessResponse {
						t.Errorf("%s success-response %v", name, e["success-response"])
					}
					if e["enabled"] != true {
						t.Errorf("%s disabled", name)
					}
				}
				// The reference lists its whole superset; ours lists exactly the schema.
				if !f.Agent.Reference && len(entries) != len(s.CommandNames()) {
					t.Errorf("ours lists %d commands, the schema has %d", len(entries), len(s.CommandNames()))
				}
				ret := r[0].Return().(map[string]any)
				if v, _ := ret["version"].(string); v == "" {
					t.Errorf("no version in %q", abbrev(r[0].Raw))
				}
			}},
		}},
		Case{Name: "cmd/guest-get-time", Steps: []Step{
			{Do: func(t testing.TB, f *Fixture) { f.Vars["before"] = time.Now().UnixNano() },
				Send: `{"execute":"guest-get-time"}`, N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
					after := time.Now().UnixNano()
					n, err := r[0].Return().(json.Number).Int64()
					// The agents have microsecond resolution: the reply may be below "before"
					// by less than a microsecond, never more.
					before := f.Vars["before"].(int64) / 1000 * 1000
					if err != nil || n < before || n > after {
						t.Fatalf("guest-get-time %v, want within [%d, %d]", r[0].Return(), before, after)
					}
				}},
		}},
		Case{Name: "cmd/guest-fsfreeze-status", Steps: []Step{
			{Send: `{"execute":"guest-fsfreeze-status"}`, Want: []string{Ok(`"thawed"`)}},
		}},
		Case{Name: "cmd/guest-get-vcpus", Steps: []Step{
			{Send: `{"execute":"guest-get-vcpus"}`, N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
				list, _ := r[0].Return().([]any)
				if len(list) == 0 {
					t.Fatalf("no vCPUs: %q", abbrev(r[0].Raw))
				}
				first := list[0].(map[string]any)
				if _, ok := first["online"]; !ok {
					t.Fatalf("no online member: %v", first)
				}
				if _, ok := first["logical-id"]; !ok {
					t.Fatalf("no logical-id member: %v", first)
				}
			}},
		}},
		Case{Name: "cmd/guest-network-get-interfaces", Steps: []Step{
			{Send: `{"execute":"guest-network-get-interfaces"}`, N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
				list, _ := r[0].Return().([]any)
				if len(list) == 0 || list[0].(map[string]any)["name"] == nil {
					t.Fatalf("no interfaces: %q", abbrev(r[0].Raw))
				}
			}},
		}},

		// Block list (test-qga.c's blockedrpcs).
		Case{Name: "block-rpcs", Args: []string{"-b", "guest-ping,guest-get-time"}, Steps: []Step{
			{Send: ping, Want: []string{NotFound("Command guest-ping has been disabled")}},
			{Send: `{"execute":"guest-get-time","id":1}`,
				Want: []string{`{"id": 1, "error": {"class": "CommandNotFound", "desc": "Command guest-get-time has been disabled"}}`}},
			{Send: `{"execute":"guest-fsfreeze-status"}`, Want: []string{Ok(`"thawed"`)}},
			{Send: `{"execute":"guest-info"}`, N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
				entries := infoEntries(t, r[0])
				for name, e := range entries {
					want := name != "guest-ping" && name != "guest-get-time" && name != "guest-get-devices"
					if e["enabled"] != want {
						t.Errorf("%s enabled=%v, want %v", name, e["enabled"], want)
					}
				}
			}},
			// A disabled command's arguments are not even looked at.
			{Send: `{"execute":"guest-ping","arguments":{"x":1}}`, Want: []string{NotFound("Command guest-ping has been disabled")}},
		}},
		Case{Name: "allow-rpcs", Args: []string{"-a", "guest-ping,guest-info", "-b", "guest-info"},
			OursOnly: "-a/--allow-rpcs arrived in qemu-ga 8.1; 7.2 rejects the option",
			Steps: []Step{
				{Send: ping, Want: []string{pong}},
				{Send: `{"execute":"guest-get-time"}`, Want: []string{NotFound("Command guest-get-time has been disabled")}},
				// The block list wins over the allow list, as in later qemu-ga releases.
				{Send: `{"execute":"guest-info"}`, Want: []string{NotFound("Command guest-info has been disabled")}},
			}},
		Case{Name: "block-rpcs/unknown names are ignored", Args: []string{"-b", "no-such-command"}, Steps: []Step{
			{Send: ping, Want: []string{pong}},
		}},

		// The frozen state survives a restart: start with the marker in the state dir.
		Case{Name: "frozen at start",
			Setup: func(t testing.TB, f *Fixture) {
				if err := os.WriteFile(filepath.Join(f.StateDir, "qga.state.isfrozen"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			Steps: []Step{
				{Send: `{"execute":"guest-fsfreeze-status"}`, Want: []string{Ok(`"frozen"`)}},
				{Send: ping, Want: []string{pong}},
				{Send: syncReq("3"), Want: []string{Ok("3")}},
				{Send: `{"execute":"guest-sync-delimited","arguments":{"id":4}}`, Want: []string{"\xff" + Ok("4")}},
				{Send: `{"execute":"guest-file-open","arguments":{"path":"{{dir}}/x","mode":"w"}}`,
					Want: []string{NotFound("Command guest-file-open has been disabled" + frozenMsg)}},
				{Send: `{"execute":"guest-get-time"}`, Want: []string{NotFound("Command guest-get-time has been disabled" + frozenMsg)}},
				{Send: `{"execute":"guest-fsfreeze-freeze"}`, Want: []string{NotFound("Command guest-fsfreeze-freeze has been disabled" + frozenMsg)}},
				{Send: `{"execute":"guest-shutdown"}`, Want: []string{NotFound("Command guest-shutdown has been disabled" + frozenMsg)}},
				{Send: `{"execute":"guest-info"}`, N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
					entries := infoEntries(t, r[0])
					for name, e := range entries {
						want := slices.Contains([]string{"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
							"guest-fsfreeze-status", "guest-fsfreeze-thaw"}, name)
						if e["enabled"] != want {
							t.Errorf("%s enabled=%v while frozen, want %v", name, e["enabled"], want)
						}
					}
				}},
				// Thawing (nothing on this host is frozen, so the count is 0) re-enables all.
				{Send: `{"execute":"guest-fsfreeze-thaw"}`, Want: []string{Ok("0")}},
				{Send: `{"execute":"guest-fsfreeze-status"}`, Want: []string{Ok(`"thawed"`)}},
				{Send: `{"execute":"guest-get-time"}`, N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
					if r[0].Obj["error"] != nil {
						t.Fatalf("still disabled after thaw: %q", r[0].Raw)
					}
					if _, err := os.Stat(filepath.Join(f.StateDir, "qga.state.isfrozen")); !os.IsNotExist(err) {
						t.Fatalf("frozen marker still there after thaw: %v", err)
					}
				}},
			}},
		// SIGTERM and SIGINT are ignored while frozen: quitting would leave the guest frozen
		// with nobody to thaw it. The agent stays frozen to the end of the case, so a signal
		// handled late is still handled while frozen.
		Case{Name: "frozen ignores SIGTERM and SIGINT",
			Setup: func(t testing.TB, f *Fixture) {
				if err := os.WriteFile(filepath.Join(f.StateDir, "qga.state.isfrozen"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			Steps: []Step{
				{Do: func(t testing.TB, f *Fixture) { f.Signal(syscall.SIGTERM) }, Send: ping, Want: []string{pong}},
				{Do: func(t testing.TB, f *Fixture) { f.Signal(syscall.SIGINT) }, Send: ping, Want: []string{pong}},
				{Send: syncReq("1"), Want: []string{Ok("1")}},
				{Send: syncReq("2"), Want: []string{Ok("2")}, Check: func(t testing.TB, f *Fixture, _ []Reply) {
					if f.Exited() {
						t.Fatal("the agent quit on a signal while frozen")
					}
				}},
			}},
	)
}
