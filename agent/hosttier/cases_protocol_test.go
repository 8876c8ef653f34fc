package hosttier

import (
	"strings"
	"testing"
)

const (
	ping = `{"execute":"guest-ping"}`
	pong = `{"return": {}}`
)

func syncReq(id string) string { return `{"execute":"guest-sync","arguments":{"id":` + id + `}}` }

var notObject = GenErr("QMP input must be a JSON object")

// untilReturn reads error replies until the reply returns want.
func untilReturn(want string) func(t testing.TB, f *Fixture, _ []Reply) {
	return func(t testing.TB, f *Fixture, _ []Reply) {
		for {
			r := f.Read()
			if r.Obj["error"] != nil {
				continue
			}
			if err := match(r, Ok(want)); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}

func init() {
	cases = append(cases,
		// Framing.
		Case{Name: "framing/split across writes", Steps: []Step{
			{Send: `{"execute":"guest-sy`},
			{Send: `nc","argum`},
			{Send: `ents":{"id":12}}`, Want: []string{Ok("12")}},
		}},
		Case{Name: "framing/several per write", Steps: []Step{
			{Send: syncReq("1") + syncReq("2") + "\n" + ping + " " + syncReq("3"),
				Want: []string{Ok("1"), Ok("2"), pong, Ok("3")}},
		}},
		Case{Name: "framing/single quotes", Steps: []Step{
			{Send: `{'execute':'guest-sync','arguments':{'id':5}}`, Want: []string{Ok("5")}},
			{Send: `{'execute':'guest-ping','id':'it\'s'}`, Want: []string{`{"return": {}, "id": "it's"}`}},
		}},
		Case{Name: "framing/0xFF resync", Steps: []Step{
			// test-qga.c's sync-delimited: the flush byte draws an error, the reply a sentinel.
			{Send: "\xff" + `{"execute":"guest-sync-delimited","arguments":{"id":123}}`,
				Want: []string{ParseErr(`stray '` + "\ufffd" + `'`), "\xff" + Ok("123")}},
			// 0xFF in the middle of a message drops the partial message.
			{Send: `{"execute":"gue` + "\xff" + ping,
				Want: []string{ParseErr(`stray '"gue` + "\ufffd" + `'`), pong}},
		}},
		Case{Name: "framing/stray bytes", Steps: []Step{
			{Send: "@" + ping, Want: []string{ParseErr("stray '@'"), pong}},
			{Send: `{"execute":"guest` + "\x01" + `-ping"}` + "\n" + ping,
				Want: []string{ParseErr(`stray '"guest` + "\x01" + `'`), ParseErr("expecting value"), pong}},
		}},
		Case{Name: "framing/invalid UTF-8", Steps: []Step{
			{Send: `{"execute":"guest-ping","id":"` + "\xc3" + `"}` + ping,
				Want: []string{ParseErr("invalid UTF-8 sequence in string"), pong}},
		}},
		Case{Name: "framing/parser errors", Steps: []Step{
			{Send: `{"execute":foo}` + ping, Want: []string{ParseErr("invalid keyword 'foo'"), pong}},
			{Send: `{"execute":"guest-ping","execute":"guest-ping"}` + ping, Want: []string{ParseErr("duplicate key"), pong}},
			{Send: `{"a" 1}` + ping, Want: []string{ParseErr("missing : in object pair"), pong}},
			{Send: `}` + ping, Want: []string{ParseErr("expecting value"), pong}},
			{Send: `{"execute":"guest-ping","id":"\uD800"}` + ping,
				Want: []string{ParseErr(`\uD800 is not a valid Unicode character`), pong}},
		}},
		Case{Name: "framing/non-ASCII is escaped", Steps: []Step{
			{Send: `{"execute":"guest-ping","id":"é😀` + "\x7f" + `"}`,
				Want: []string{`{"return": {}, "id": "é😀` + "\x7f" + `"}`},
				Check: func(t testing.TB, f *Fixture, r []Reply) {
					if !strings.Contains(string(r[0].Raw), `"\u00E9\uD83D\uDE00\u007F"`) {
						t.Fatalf("reply %q: non-ASCII not escaped as the reference does", r[0].Raw)
					}
				}},
		}},
		Case{Name: "framing/token count limit", Steps: []Step{
			// The rest of the rejected array draws errors of its own; the request after it is
			// still answered.
			{Send: "[" + strings.Repeat("1,", 1<<20) + "1]\n" + syncReq("8"),
				Want: []string{GenErr("JSON token count limit exceeded")}, Check: untilReturn("8")},
		}},
		Case{Name: "framing/token size limit", Steps: []Step{
			{Send: `{"execute":"guest-ping","id":"` + strings.Repeat("x", 64<<20) + `"}` + "\n",
				N: 1, Check: func(t testing.TB, f *Fixture, r []Reply) {
					if _, desc := r[0].Error(); desc != "JSON token size limit exceeded" {
						t.Fatalf("first reply %q", abbrev(r[0].Raw))
					}
				}},
			// Whatever else the oversized string drew, the next request is answered.
			{Send: syncReq("77"), Check: untilReturn("77")},
		}},
		Case{Name: "framing/nesting limit",
			RefWrong: "after a nesting-limit error qemu-ga keeps counting the rejected input's brackets, " +
				"so the next request on the following line is swallowed into an array",
			Steps: []Step{
				{Send: strings.Repeat("[", 1026) + "\n" + ping + "\n]\n" + syncReq("7") + "\n",
					Want: []string{GenErr("JSON nesting depth limit exceeded"), pong, ParseErr("expecting value"), Ok("7")}},
			},
			RefSteps: []Step{
				{Send: strings.Repeat("[", 1026) + "\n" + ping + "\n]\n" + syncReq("7") + "\n",
					Want: []string{GenErr("JSON nesting depth limit exceeded"), notObject, Ok("7")}},
			}},

		// Request checks (qmp-dispatch.c).
		Case{Name: "request/not an object", Steps: []Step{
			{Send: `5 [] "x" {"execute":1}`, Want: []string{notObject, notObject, notObject,
				GenErr("QMP input member 'execute' must be a string")}},
			{Send: `{"execute":"guest-ping","arguments":[]}`, Want: []string{GenErr("QMP input member 'arguments' must be an object")}},
			{Send: `{"execute":"guest-ping","x":1}`, Want: []string{GenErr("QMP input member 'x' is unexpected")}},
			{Send: `{'exec-oob':'guest-ping'}`, Want: []string{GenErr("QMP input member 'exec-oob' is unexpected")}},
			{Send: `{"arguments":{}}`, Want: []string{GenErr("QMP input lacks member 'execute'")}},
			{Send: ping, Want: []string{pong}},
		}},
		Case{Name: "request/unknown command", Steps: []Step{
			{Send: `{"execute":"guest-invalid-cmd"}`, Want: []string{NotFound("The command guest-invalid-cmd has not been found")}},
			{Send: `{"execute":"nope","id":{"a":[1,2]}}`,
				Want: []string{`{"id": {"a": [1, 2]}, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`}},
		}},
		Case{Name: "request/id echo", Steps: []Step{
			{Send: `{'execute':'guest-ping','id':1}`, Want: []string{`{"return": {}, "id": 1}`}},
			{Send: `{"execute":"guest-ping","id":null}`, Want: []string{`{"return": {}, "id": null}`}},
			{Send: `{"execute":"guest-sync","arguments":{"id":3},"id":"s"}`, Want: []string{`{"return": 3, "id": "s"}`}},
			{Send: `{"execute":"guest-sync","id":[true]}`, Want: []string{`{"error": {"class": "GenericError", "desc": "Parameter 'id' is missing"}, "id": [true]}`}},
		}},
		Case{Name: "request/argument errors", Steps: []Step{
			{Send: `{"execute":"guest-sync"}`, Want: []string{GenErr("Parameter 'id' is missing")}},
			{Send: `{"execute":"guest-sync","arguments":{"id":"a"}}`, Want: []string{GenErr("Invalid parameter type for 'id', expected: integer")}},
			{Send: `{"execute":"guest-sync","arguments":{"id":18446744073709551615}}`, Want: []string{GenErr("Invalid parameter type for 'id', expected: integer")}},
			{Send: `{"execute":"guest-sync","arguments":{"id":1.5}}`, Want: []string{GenErr("Invalid parameter type for 'id', expected: integer")}},
			{Send: `{'execute':'guest-ping','arguments':{'foo':42}}`, Want: []string{GenErr("Parameter 'foo' is unexpected")}},
			{Send: `{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":"nope"}}`,
				Want: []string{GenErr("Parameter 'whence' does not accept value 'nope'")}},
			{Send: `{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":true}}`,
				Want: []string{GenErr("Invalid parameter type for 'whence', expected: GuestFileWhence")}},
			{Send: ping, Want: []string{pong}},
		}},

		// Transport: unix-listen serves the next client after the first leaves.
		Case{Name: "transport/unix-listen next client",
			RefWrong: "qemu-ga keeps one JSON parser for all unix-listen clients, so a partial request " +
				"left by one client corrupts the next client's first request",
			Steps: []Step{
				{Send: `{"execute":"guest-sync","arguments":`},
				{Do: func(t testing.TB, f *Fixture) { f.Connect() }, Send: ping, Want: []string{pong}},
				{Do: func(t testing.TB, f *Fixture) { f.Connect() }, Send: syncReq("4"), Want: []string{Ok("4")}},
			},
			RefSteps: []Step{
				{Send: `{"execute":"guest-sync","arguments":`},
				{Do: func(t testing.TB, f *Fixture) { f.Connect() }, Send: ping + "}",
					Want: []string{GenErr("Parameter 'id' is missing")}},
				{Do: func(t testing.TB, f *Fixture) { f.Connect() }, Send: syncReq("4"), Want: []string{Ok("4")}},
			}},
	)
}
