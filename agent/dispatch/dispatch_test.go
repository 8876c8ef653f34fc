package dispatch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch/reftest"
	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/schema"
)

// recorder is a handler that remembers the arguments it was called with.
type recorder struct {
	calls atomic.Int32
	last  Args
	ret   any
	err   error
}

func (r *recorder) handle(_ context.Context, a Args) (any, error) {
	r.calls.Add(1)
	r.last = a
	return r.ret, r.err
}

// newAll registers a recorder for every schema command.
func newAll(t testing.TB, opts Options) (*Dispatcher, map[string]*recorder) {
	t.Helper()
	d := New(schema.MustLoad(), opts)
	recs := map[string]*recorder{}
	for _, name := range schema.MustLoad().CommandNames() {
		r := &recorder{}
		recs[name] = r
		d.Register(name, r.handle)
	}
	return d, recs
}

// parse decodes a JSON request the way the protocol decoder will hand it over.
func parse(t testing.TB, s string) protocol.Message {
	t.Helper()
	v, err := reftest.Decode([]byte(s))
	if err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return protocol.Message{Value: v}
}

func dispatch(t testing.TB, d *Dispatcher, req string) (protocol.Response, bool) {
	t.Helper()
	return d.Dispatch(context.Background(), parse(t, req))
}

func wantErr(t *testing.T, d *Dispatcher, req, class, desc string) protocol.Response {
	t.Helper()
	resp, reply := dispatch(t, d, req)
	if !reply || resp.Err == nil {
		t.Fatalf("%s: got reply=%v %+v, want error %s %q", req, reply, resp, class, desc)
	}
	if resp.Err.Class != class || resp.Err.Desc != desc {
		t.Fatalf("%s:\n got %s %q\nwant %s %q", req, resp.Err.Class, resp.Err.Desc, class, desc)
	}
	return resp
}

const (
	generic  = protocol.ClassGenericError
	notFound = protocol.ClassCommandNotFound
)

// Every expectation below was read off qemu-ga 7.2.22 on this host; TestMatchesReference
// replays them against it.
var requestCases = []struct{ req, class, desc string }{
	{`[1]`, generic, "QMP input must be a JSON object"},
	{`5`, generic, "QMP input must be a JSON object"},
	{`"guest-ping"`, generic, "QMP input must be a JSON object"},
	{`null`, generic, "QMP input must be a JSON object"},
	{`{"execute":5,"foo":1}`, generic, "QMP input member 'execute' must be a string"},
	{`{"foo":1,"execute":5}`, generic, "QMP input member 'execute' must be a string"},
	{`{"execute":"guest-ping","arguments":5,"foo":1}`, generic, "QMP input member 'arguments' must be an object"},
	{`{"execute":"guest-nope","arguments":5}`, generic, "QMP input member 'arguments' must be an object"},
	{`{"execute":"guest-ping","arguments":null}`, generic, "QMP input member 'arguments' must be an object"},
	{`{"execute":"guest-ping","arguments":[]}`, generic, "QMP input member 'arguments' must be an object"},
	{`{"id":7}`, generic, "QMP input lacks member 'execute'"},
	{`{}`, generic, "QMP input lacks member 'execute'"},
	{`{"exec-oob":"guest-ping"}`, generic, "QMP input member 'exec-oob' is unexpected"},
	{`{"execute":"guest-nope","id":3,"exec-oob":"x"}`, generic, "QMP input member 'exec-oob' is unexpected"},
	{`{"execute":"guest-ping","control":{}}`, generic, "QMP input member 'control' is unexpected"},
	{`{"execute":"guest-nope"}`, notFound, "The command guest-nope has not been found"},
	{`{"execute":""}`, notFound, "The command  has not been found"},
	{`{"execute":"GUEST-PING"}`, notFound, "The command GUEST-PING has not been found"},
	{`{"execute":" guest-ping"}`, notFound, "The command  guest-ping has not been found"},
	{`{"execute":"guest-nope","arguments":{"x":1}}`, notFound, "The command guest-nope has not been found"},
}

var argCases = []struct{ req, desc string }{
	{`{"execute":"guest-sync"}`, "Parameter 'id' is missing"},
	{`{"execute":"guest-sync","arguments":{}}`, "Parameter 'id' is missing"},
	{`{"execute":"guest-sync","arguments":{"id":"1"}}`, "Invalid parameter type for 'id', expected: integer"},
	{`{"execute":"guest-sync","arguments":{"id":18446744073709551615}}`, "Invalid parameter type for 'id', expected: integer"},
	{`{"execute":"guest-sync","arguments":{"id":9223372036854775808}}`, "Invalid parameter type for 'id', expected: integer"},
	{`{"execute":"guest-sync","arguments":{"id":1.0}}`, "Invalid parameter type for 'id', expected: integer"},
	{`{"execute":"guest-sync","arguments":{"id":1e3}}`, "Invalid parameter type for 'id', expected: integer"},
	{`{"execute":"guest-sync","arguments":{"id":null}}`, "Invalid parameter type for 'id', expected: integer"},
	{`{"execute":"guest-sync","arguments":{"id":1,"x":2}}`, "Parameter 'x' is unexpected"},
	{`{"execute":"guest-ping","arguments":{"foo":42}}`, "Parameter 'foo' is unexpected"},
	{`{"execute":"guest-ping","arguments":{"foo":1,"bar":2,"baz":3}}`, "Parameter 'baz' is unexpected"},
	{`{"execute":"guest-ping","arguments":{"bar":2,"foo":1,"baz":3}}`, "Parameter 'baz' is unexpected"},
	{`{"execute":"guest-ping","arguments":{"a":1,"b":1,"c":1,"d":1}}`, "Parameter 'b' is unexpected"},
	{`{"execute":"guest-ping","arguments":{"x":1,"y":1}}`, "Parameter 'y' is unexpected"},
	{`{"execute":"guest-ping","arguments":{"zz":1,"aa":1,"handle":1}}`, "Parameter 'aa' is unexpected"},
	{`{"execute":"guest-ping","arguments":{"alpha":1,"beta":1,"gamma":1,"delta":1,"eps":1}}`, "Parameter 'beta' is unexpected"},
	{`{"execute":"guest-file-close","arguments":{"handle":1,"zz":1,"aa":1}}`, "Parameter 'aa' is unexpected"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":1,"whence":1,"q1":1,"q2":1,"q3":1,"q4":1}}`, "Parameter 'q4' is unexpected"},
	{`{"execute":"guest-info","arguments":{"x":1}}`, "Parameter 'x' is unexpected"},
	{`{"execute":"guest-set-time","arguments":{"time":null}}`, "Invalid parameter type for 'time', expected: integer"},
	{`{"execute":"guest-shutdown","arguments":{"mode":null}}`, "Invalid parameter type for 'mode', expected: string"},
	{`{"execute":"guest-file-open","arguments":{"path":5,"mode":7}}`, "Invalid parameter type for 'path', expected: string"},
	{`{"execute":"guest-file-open","arguments":{"mode":7}}`, "Parameter 'path' is missing"},
	{`{"execute":"guest-file-open","arguments":{"path":"/x","mode":7}}`, "Invalid parameter type for 'mode', expected: string"},
	{`{"execute":"guest-file-write","arguments":{"handle":1,"buf-b64":true}}`, "Invalid parameter type for 'buf-b64', expected: string"},
	{`{"execute":"guest-file-read","arguments":{"handle":1,"count":"5"}}`, "Invalid parameter type for 'count', expected: integer"},
	{`{"execute":"guest-file-seek","arguments":{"whence":null}}`, "Parameter 'handle' is missing"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"whence":1}}`, "Parameter 'offset' is missing"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0}}`, "Parameter 'whence' is missing"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":1.5}}`, "Invalid parameter type for 'whence', expected: integer"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":true}}`, "Invalid parameter type for 'whence', expected: GuestFileWhence"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":null}}`, "Invalid parameter type for 'whence', expected: GuestFileWhence"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":{}}}`, "Invalid parameter type for 'whence', expected: GuestFileWhence"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":[0]}}`, "Invalid parameter type for 'whence', expected: GuestFileWhence"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":"SET"}}`, "Parameter 'whence' does not accept value 'SET'"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":" set"}}`, "Parameter 'whence' does not accept value ' set'"},
	{`{"execute":"guest-file-seek","arguments":{"handle":1,"offset":0,"whence":18446744073709551615}}`, "Invalid parameter type for 'whence', expected: integer"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":{}}}`, "Invalid parameter type for 'vcpus', expected: array"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[5]}}`, "Invalid parameter type for 'vcpus[0]', expected: object"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":"x","online":true}]}}`, "Invalid parameter type for 'vcpus[0].logical-id', expected: integer"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":1,"online":"x"},{"online":true}]}}`, "Invalid parameter type for 'vcpus[0].online', expected: boolean"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":1,"online":false,"can-offline":false,"foo":1},{"online":true}]}}`, "Parameter 'vcpus[0].foo' is unexpected"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":99,"online":false},{"online":true}]}}`, "Parameter 'vcpus[1].logical-id' is missing"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":99,"online":false},{"logical-id":99,"online":"x"}]}}`, "Invalid parameter type for 'vcpus[1].online', expected: boolean"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":99,"online":false,"can-offline":null}]}}`, "Invalid parameter type for 'vcpus[0].can-offline', expected: boolean"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":99,"online":false}],"x":1}}`, "Parameter 'x' is unexpected"},
	{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":99,"online":false,"a":1}],"x":1}}`, "Parameter 'vcpus[0].a' is unexpected"},
}

func TestRequestChecks(t *testing.T) {
	d, _ := newAll(t, Options{})
	for _, c := range requestCases {
		wantErr(t, d, c.req, c.class, c.desc)
	}
}

func TestArgumentChecks(t *testing.T) {
	d, recs := newAll(t, Options{})
	for _, c := range argCases {
		wantErr(t, d, c.req, generic, c.desc)
	}
	for name, r := range recs {
		if n := r.calls.Load(); n != 0 {
			t.Errorf("%s handler ran %d times for requests with bad arguments", name, n)
		}
	}
}

func TestIDIsEchoedForEveryObjectRequest(t *testing.T) {
	d, recs := newAll(t, Options{})
	recs["guest-sync"].ret = int64(5)
	for _, id := range []string{`1`, `"s"`, `null`, `{"a":[1]}`, `[1,2]`, `true`, `1.5`, `18446744073709551615`} {
		for _, req := range []string{
			`{"execute":"guest-sync","arguments":{"id":5},"id":` + id + `}`, // success
			`{"execute":"guest-sync","id":` + id + `}`,                      // argument error
			`{"execute":"guest-nope","id":` + id + `}`,                      // unknown command
			`{"id":` + id + `}`, // no execute
			`{"execute":"guest-ping","bad":1,"id":` + id + `}`, // unexpected member
		} {
			resp, reply := dispatch(t, d, req)
			want, _ := reftest.Decode([]byte(id))
			if !reply || !resp.HasID || !reflect.DeepEqual(resp.ID, want) {
				t.Errorf("%s: reply=%v HasID=%v ID=%#v, want id %#v", req, reply, resp.HasID, resp.ID, want)
			}
		}
	}
	resp, _ := dispatch(t, d, `{"execute":"guest-ping"}`)
	if resp.HasID {
		t.Error("id added to a request that had none")
	}
	resp, _ = dispatch(t, d, `[{"id":1}]`)
	if resp.HasID {
		t.Error("id taken from a non-object request")
	}
	parseErr := &protocol.Error{Class: generic, Desc: "JSON parse error, stray '@'"}
	resp, reply := d.Dispatch(context.Background(), protocol.Message{Err: parseErr})
	if !reply || resp.Err != parseErr || resp.HasID {
		t.Errorf("parse error: reply=%v %+v; want the parse error itself, without id", reply, resp)
	}
}

func TestHandlerResults(t *testing.T) {
	d, recs := newAll(t, Options{})
	ctx := context.Background()

	resp, reply := dispatch(t, d, `{"execute":"guest-ping"}`)
	if !reply || resp.Err != nil || resp.Return != nil || resp.Delimited {
		t.Errorf("nil return: reply=%v %+v; want an empty-object reply (Return nil)", reply, resp)
	}

	recs["guest-sync-delimited"].ret = Delimited{Value: int64(42)}
	resp, _ = dispatch(t, d, `{"execute":"guest-sync-delimited","arguments":{"id":42}}`)
	if !resp.Delimited || resp.Return != int64(42) {
		t.Errorf("Delimited: %+v", resp)
	}
	recs["guest-sync-delimited"].ret = &Delimited{Value: int64(43)}
	resp, _ = dispatch(t, d, `{"execute":"guest-sync-delimited","arguments":{"id":43}}`)
	if !resp.Delimited || resp.Return != int64(43) {
		t.Errorf("*Delimited: %+v", resp)
	}

	recs["guest-get-time"].err = errors.New("Failed to get time: boom")
	wantErr(t, d, `{"execute":"guest-get-time"}`, generic, "Failed to get time: boom")

	custom := &protocol.Error{Class: notFound, Desc: "custom"}
	recs["guest-get-time"].err = fmt.Errorf("wrapped: %w", custom)
	resp = wantErr(t, d, `{"execute":"guest-get-time"}`, notFound, "custom")
	if resp.Err != custom {
		t.Error("a *protocol.Error was not sent as it is")
	}

	d.Register("guest-get-time", func(context.Context, Args) (any, error) { panic("bug") })
	resp, reply = d.Dispatch(ctx, parse(t, `{"execute":"guest-get-time","id":9}`))
	if !reply || resp.Err == nil || resp.Err.Class != generic || !strings.Contains(resp.Err.Desc, "bug") || resp.ID != int64(9) {
		t.Errorf("panicking handler: reply=%v %+v; want a GenericError naming the panic, with the id", reply, resp)
	}
}

func TestNoSuccessResponseCommandsAnswerOnlyErrors(t *testing.T) {
	d, recs := newAll(t, Options{})
	for _, c := range schema.MustLoad().Commands {
		if c.SuccessResponse {
			continue
		}
		req := `{"execute":"` + c.Name + `","id":1}`
		if resp, reply := dispatch(t, d, req); reply {
			t.Errorf("%s succeeded and was answered: %+v", c.Name, resp)
		}
		if n := recs[c.Name].calls.Load(); n != 1 {
			t.Errorf("%s handler ran %d times", c.Name, n)
		}
		recs[c.Name].err = protocol.Errorf("child process has failed to shutdown")
		resp := wantErr(t, d, req, generic, "child process has failed to shutdown")
		if resp.ID != int64(1) {
			t.Errorf("%s error reply lost its id", c.Name)
		}
		wantErr(t, d, `{"execute":"`+c.Name+`","arguments":{"zz":1}}`, generic, "Parameter 'zz' is unexpected")
	}
	// Every seed command that sends nothing on success: guest-shutdown and the three suspends.
	n := 0
	for _, c := range schema.MustLoad().Commands {
		if !c.SuccessResponse {
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d commands without success-response, want 4", n)
	}
}

func TestHandlersGetTypedArguments(t *testing.T) {
	d, recs := newAll(t, Options{})
	dispatch(t, d, `{"execute":"guest-file-seek","arguments":{"handle":1000,"offset":-5,"whence":"end"}}`)
	want := Args{"handle": int64(1000), "offset": int64(-5), "whence": "end"}
	if got := recs["guest-file-seek"].last; !reflect.DeepEqual(got, want) {
		t.Errorf("seek args %#v, want %#v", got, want)
	}
	dispatch(t, d, `{"execute":"guest-file-seek","arguments":{"handle":1000,"offset":0,"whence":2}}`)
	if got := recs["guest-file-seek"].last["whence"]; got != int64(2) {
		t.Errorf("whence as integer: %#v", got)
	}
	dispatch(t, d, `{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":1,"online":false},{"logical-id":2,"online":true,"can-offline":true}]}}`)
	wantV := Args{"vcpus": []any{
		Args{"logical-id": int64(1), "online": false},
		Args{"logical-id": int64(2), "online": true, "can-offline": true},
	}}
	if got := recs["guest-set-vcpus"].last; !reflect.DeepEqual(got, wantV) {
		t.Errorf("set-vcpus args %#v, want %#v", got, wantV)
	}
	dispatch(t, d, `{"execute":"guest-file-open","arguments":{"path":"/x"}}`)
	a := recs["guest-file-open"].last
	if a.Has("mode") || len(a) != 1 {
		t.Errorf("absent optional member present: %#v", a)
	}
	if p, ok := a.String("path"); !ok || p != "/x" {
		t.Errorf("String(path) = %q, %v", p, ok)
	}
	dispatch(t, d, `{"execute":"guest-sync","arguments":{"id":-9223372036854775808}}`)
	if id, ok := recs["guest-sync"].last.Int("id"); !ok || id != math.MinInt64 {
		t.Errorf("Int(id) = %d, %v", id, ok)
	}
}

func TestBlockAndAllowLists(t *testing.T) {
	d, _ := newAll(t, Options{Blocked: []string{"guest-ping", "guest-get-time", "Guest-Info", " guest-sync"}})
	wantErr(t, d, `{"execute":"guest-ping"}`, notFound, "Command guest-ping has been disabled")
	wantErr(t, d, `{"execute":"guest-get-time","arguments":{"bad":1}}`, notFound, "Command guest-get-time has been disabled")
	// Entries that differ in case or blanks still block their command (the reference blocks
	// nothing for them: see listSet), and requests that differ from a blocked name are simply
	// unknown.
	wantErr(t, d, `{"execute":"guest-info"}`, notFound, "Command guest-info has been disabled")
	wantErr(t, d, `{"execute":"guest-sync","arguments":{"id":1}}`, notFound, "Command guest-sync has been disabled")
	wantErr(t, d, `{"execute":"Guest-Ping"}`, notFound, "The command Guest-Ping has not been found")
	wantErr(t, d, `{"execute":"guest-ping "}`, notFound, "The command guest-ping  has not been found")

	a, _ := newAll(t, Options{Allowed: []string{"guest-ping", "guest-get-time"}})
	if resp, _ := dispatch(t, a, `{"execute":"guest-ping"}`); resp.Err != nil {
		t.Errorf("allowed guest-ping: %v", resp.Err)
	}
	wantErr(t, a, `{"execute":"guest-get-fsinfo"}`, notFound, "The command guest-get-fsinfo has not been found")
	wantErr(t, a, `{"execute":"guest-info"}`, notFound, "Command guest-info has been disabled")

	both, _ := newAll(t, Options{Allowed: []string{"guest-ping", "guest-info"}, Blocked: []string{"guest-ping"}})
	wantErr(t, both, `{"execute":"guest-ping"}`, notFound, "Command guest-ping has been disabled")
	if resp, _ := dispatch(t, both, `{"execute":"guest-info"}`); resp.Err != nil {
		t.Errorf("allowed guest-info: %v", resp.Err)
	}
}

func TestFrozenState(t *testing.T) {
	var frozen atomic.Bool
	d, _ := newAll(t, Options{Frozen: frozen.Load, Blocked: []string{"guest-info", "guest-file-open"}})
	frozen.Store(true)
	allowed := map[string]bool{}
	for _, n := range FrozenAllowlist {
		allowed[n] = true
	}
	for _, c := range schema.MustLoad().Commands {
		req := `{"execute":"` + c.Name + `"}`
		resp, reply := dispatch(t, d, req)
		switch {
		case c.Name == "guest-info":
			wantErr(t, d, req, notFound, "Command guest-info has been disabled")
		case allowed[c.Name]:
			if reply && resp.Err != nil && resp.Err.Class == notFound {
				t.Errorf("%s refused while frozen: %v", c.Name, resp.Err)
			}
		default:
			// The frozen reason wins over the block list for commands outside the allowlist,
			// and comes before any argument check.
			wantErr(t, d, req, notFound, "Command "+c.Name+" has been disabled: the agent is in frozen state")
			wantErr(t, d, `{"execute":"`+c.Name+`","arguments":{"zz":1}}`, notFound,
				"Command "+c.Name+" has been disabled: the agent is in frozen state")
		}
	}
	frozen.Store(false)
	wantErr(t, d, `{"execute":"guest-file-open","arguments":{"path":"/x"}}`, notFound, "Command guest-file-open has been disabled")
	if resp, _ := dispatch(t, d, `{"execute":"guest-get-time"}`); resp.Err != nil {
		t.Errorf("after thaw: %v", resp.Err)
	}
}

func TestInfo(t *testing.T) {
	var frozen atomic.Bool
	s := schema.MustLoad()
	d := New(s, Options{Frozen: frozen.Load, Blocked: []string{"guest-get-time"}})
	nop := func(context.Context, Args) (any, error) { return nil, nil }
	// Registration order must not matter: the list follows the schema, reversed.
	for i := len(s.Commands) - 1; i >= 0; i-- {
		if n := s.Commands[i].Name; n != "guest-set-vcpus" {
			d.Register(n, nop)
		}
	}
	info := d.Info()
	if len(info) != len(s.Commands)-1 {
		t.Fatalf("%d entries, want %d (unregistered commands are not listed)", len(info), len(s.Commands)-1)
	}
	var names []string
	for _, c := range info {
		names = append(names, c.Name)
	}
	if names[0] != "guest-get-vcpus" || names[len(names)-1] != "guest-sync-delimited" || names[len(names)-2] != "guest-sync" {
		t.Errorf("order %v, want reverse schema order", names)
	}
	for i := 1; i < len(info); i++ {
		a, b := indexOf(s, info[i-1].Name), indexOf(s, info[i].Name)
		if a <= b {
			t.Fatalf("order %v is not reverse schema order", names)
		}
	}
	for _, c := range info {
		wantSR := s.Command(c.Name).SuccessResponse
		if c.SuccessResponse != wantSR {
			t.Errorf("%s success-response %v, want %v", c.Name, c.SuccessResponse, wantSR)
		}
		if c.Enabled != (c.Name != "guest-get-time") {
			t.Errorf("%s enabled=%v", c.Name, c.Enabled)
		}
	}
	frozen.Store(true)
	for _, c := range d.Info() {
		want := c.Name != "guest-get-time" && contains(FrozenAllowlist, c.Name)
		if c.Enabled != want {
			t.Errorf("frozen: %s enabled=%v, want %v", c.Name, c.Enabled, want)
		}
	}
	wantErr(t, d, `{"execute":"guest-set-vcpus","arguments":{"vcpus":[]}}`, notFound, "The command guest-set-vcpus has not been found")
}

func TestRegisterRejectsUnknownCommands(t *testing.T) {
	d := New(schema.MustLoad(), Options{})
	defer func() {
		if recover() == nil {
			t.Fatal("Register of a command outside the schema did not panic")
		}
	}()
	d.Register("guest-exec", func(context.Context, Args) (any, error) { return nil, nil })
}

func indexOf(s *schema.Schema, name string) int {
	for i, c := range s.Commands {
		if c.Name == name {
			return i
		}
	}
	return -1
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
