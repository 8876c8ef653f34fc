package diff

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qgakit/qgakit/schema"
)

// repoRoot is the module root, from this file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// writeCorpus makes a corpus directory with one requests file and a documented.json.
func writeCorpus(t *testing.T, requests, documented string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "requests"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "requests", "t.json"), []byte(requests), 0o644); err != nil {
		t.Fatal(err)
	}
	if documented != "" {
		if err := os.WriteFile(filepath.Join(dir, "documented.json"), []byte(documented), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The project's own corpus must load: every entry valid, every documented difference
// matching an entry.
func TestProjectCorpusLoads(t *testing.T) {
	c, err := Load(filepath.Join(repoRoot(), "corpus"))
	if err != nil {
		t.Fatal(err)
	}
	cmds := map[string]bool{}
	for _, e := range c.Entries {
		cmds[e.Cmd] = true
	}
	for _, name := range schema.MustLoad().CommandNames() {
		if !cmds[name] {
			t.Errorf("no corpus entry exercises %s", name)
		}
	}
	if !cmds[""] {
		t.Error("the corpus has no garbage (entries that name no command)")
	}
}

func TestLoadRefuses(t *testing.T) {
	cases := map[string]struct{ requests, documented string }{
		"unknown field":          {`{"entries":[{"name":"a","send":{"execute":"guest-ping"},"sned":1}]}`, ""},
		"send and raw":           {`{"entries":[{"name":"a","send":{"execute":"guest-ping"},"raw":["x"]}]}`, ""},
		"neither send nor raw":   {`{"entries":[{"name":"a"}]}`, ""},
		"bad name":               {`{"entries":[{"name":"A B","raw":["x"]}]}`, ""},
		"duplicate":              {`{"entries":[{"name":"a","raw":["x"]},{"name":"a","raw":["y"]}]}`, ""},
		"cmd not in schema":      {`{"entries":[{"name":"a","cmd":"guest-exec","raw":["x"]}]}`, ""},
		"cmd and execute differ": {`{"entries":[{"name":"a","cmd":"guest-ping","send":{"execute":"guest-info"}}]}`, ""},
		"raw names an unsafe command without cmd": {`{"entries":[{"name":"a","raw":["{\"execute\":\"guest-shutdown\"}"]}]}`, ""},
		"host write outside tmp":                  {`{"entries":[{"name":"a","send":{"execute":"guest-file-open","arguments":{"path":"/etc/x","mode":"w"}}}]}`, ""},
		"unknown normalisation":                   {`{"entries":[{"name":"a","send":{"execute":"guest-ping"},"norm":{"return":"fuzzy"}}]}`, ""},
		"bad segment":                             {`{"entries":[{"name":"a","raw":[{"hex":"ff","repeat":"x","count":2}]}]}`, ""},
		"repeat without count":                    {`{"entries":[{"name":"a","raw":[{"repeat":"x"}]}]}`, ""},
		"documented without reason":               {`{"entries":[{"name":"a","raw":["x"]}]}`, `{"documented":[{"entry":"t/a"}]}`},
		"documented matches nothing":              {`{"entries":[{"name":"a","raw":["x"]}]}`, `{"documented":[{"entry":"t/b","reason":"r"}]}`},
		"documented unknown kind":                 {`{"entries":[{"name":"a","raw":["x"]}]}`, `{"documented":[{"entry":"t/a","kinds":["colour"],"reason":"r"}]}`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Load(writeCorpus(t, c.requests, c.documented)); err == nil {
				t.Error("Load accepted it")
			}
		})
	}
}

func TestLoadAcceptsAndFillsCmd(t *testing.T) {
	c, err := Load(writeCorpus(t,
		`{"entries":[{"name":"ping","send":{"execute":"guest-ping"}},
		  {"name":"read-etc","send":{"execute":"guest-file-open","arguments":{"path":"/etc/hostname","mode":"r"}}}]}`,
		`{"documented":[{"entry":"t/*","kinds":["desc"],"reason":"because"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Entries[0].ID != "t/ping" || c.Entries[0].Cmd != "guest-ping" {
		t.Errorf("entry %q cmd %q, want t/ping and guest-ping from execute", c.Entries[0].ID, c.Entries[0].Cmd)
	}
	if got := c.documented("t/ping", ModeHost, KindDesc); got != "because" {
		t.Errorf("documented desc = %q", got)
	}
	if got := c.documented("t/ping", ModeHost, KindValue); got != "" {
		t.Errorf("a desc-only acceptance covered a value difference: %q", got)
	}
}

func TestUnsafe(t *testing.T) {
	cases := []struct {
		e        Entry
		host, vm bool // runs there
	}{
		{Entry{Cmd: "guest-ping"}, true, true},
		{Entry{Cmd: "guest-shutdown"}, false, false},
		{Entry{Cmd: "guest-shutdown", Safe: true}, true, true},
		{Entry{Cmd: "guest-set-time"}, false, true},
		{Entry{Cmd: "guest-fstrim"}, false, true},
		{Entry{Cmd: "guest-set-vcpus"}, false, true},
		{Entry{Cmd: "guest-fsfreeze-freeze"}, false, false},
		{Entry{Cmd: "guest-suspend-ram", Safe: true, Only: ModeVM}, false, true},
		{Entry{Cmd: "guest-ping", Only: ModeHost}, true, false},
	}
	for _, c := range cases {
		if got := c.e.Unsafe(ModeHost) == ""; got != c.host {
			t.Errorf("%+v runs on the host: %v, want %v", c.e, got, c.host)
		}
		if got := c.e.Unsafe(ModeVM) == ""; got != c.vm {
			t.Errorf("%+v runs in the VM: %v, want %v", c.e, got, c.vm)
		}
	}
}

func TestPayload(t *testing.T) {
	vars := map[string]any{"h": json.Number("1004"), "tmp": `/tmp/a "b"`}
	e := Entry{ID: "x", Send: json.RawMessage(`{"execute": "guest-file-read",
		"arguments": {"handle": "${h}", "path": "${tmp}/f", "note": "h=${h}"}}`)}
	got, err := e.Payload(vars)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"execute":"guest-file-read","arguments":{"handle":1004,"path":"/tmp/a \"b\"/f","note":"h=1004"}}`
	if string(got) != want {
		t.Errorf("payload\n %s\nwant\n %s", got, want)
	}

	raw := Entry{ID: "y", Raw: []Segment{{Text: "a${h}"}, {Hex: "ff 00"}, {Repeat: "[", Count: 3}}}
	got, err = raw.Payload(vars)
	if err != nil {
		t.Fatal(err)
	}
	if want := "a1004\xff\x00[[["; string(got) != want {
		t.Errorf("raw payload %q, want %q", got, want)
	}

	if _, err := (Entry{ID: "z", Raw: []Segment{{Text: "${nope}"}}}).Payload(vars); err == nil {
		t.Error("a missing variable was not an error")
	}
}

func TestSegmentJSON(t *testing.T) {
	var segs []Segment
	if err := json.Unmarshal([]byte(`["text", {"hex": "ff fe"}, {"repeat": "]", "count": 2}]`), &segs); err != nil {
		t.Fatal(err)
	}
	if segs[0].Text != "text" || segs[1].Hex != "ff fe" || segs[2].Repeat != "]" || segs[2].Count != 2 {
		t.Errorf("segments %+v", segs)
	}
	if err := json.Unmarshal([]byte(`[{"hex": "ff", "bogus": 1}]`), &segs); err == nil {
		t.Error("an unknown segment member was accepted")
	}
}

func TestNormalise(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	n := normaliser{
		rules: map[string]string{
			"return.time":             "time-ns",
			"return.old":              "time-ns",
			"return.handle":           "handle",
			"return.version":          "any",
			"return.cmds":             "seed-commands",
			"return.ifs.*.statistics": "shape",
			"return.list":             "sort",
			"return.kind":             "type",
		},
		tmp:   "/tmp/qgadiff-1/a/files",
		now:   now,
		seeds: schema.MustLoad(),
	}
	line := `{"return": {
		"time": ` + strconv.FormatInt(now.UnixNano()+int64(time.Minute), 10) + `,
		"old": ` + strconv.FormatInt(now.UnixMicro(), 10) + `,
		"handle": 1007, "version": "7.2.22",
		"cmds": [{"name": "guest-exec", "enabled": true}, {"name": "guest-ping", "enabled": true}],
		"ifs": [{"name": "lo", "statistics": {"rx-bytes": 5, "tx-bytes": 7}}],
		"list": [3, 1, 2], "kind": "x",
		"path": "/tmp/qgadiff-1/a/files/f1"}}`
	r, obj := n.reply([]byte(line))
	if obj == nil {
		t.Fatal("the line did not decode")
	}
	want := `{"return":{"cmds":[{"enabled":true,"name":"guest-ping"}],"handle":"<handle>",` +
		`"ifs":[{"name":"lo","statistics":{"rx-bytes":"<number>","tx-bytes":"<number>"}}],` +
		`"kind":"<string>","list":[1,2,3],"old":` + strconv.FormatInt(now.UnixMicro(), 10) + `,` +
		`"path":"${tmp}/f1","time":"<time-ns>","version":"<any>"}}`
	if r.Value != want {
		t.Errorf("normalised\n %s\nwant\n %s", r.Value, want)
	}
	if r.Class != "return" {
		t.Errorf("class %q", r.Class)
	}
	// The raw object keeps what the agent said, for save.
	if v, _ := lookup(obj, []string{"return", "handle"}); v != json.Number("1007") {
		t.Errorf("raw handle %v", v)
	}

	e, _ := n.reply([]byte("\xff" + `{"error": {"class": "GenericError", "desc": "failed to open file '/tmp/qgadiff-1/a/files/x'"}, "id": 3}`))
	if e.Class != "0xFF error:GenericError" || e.Desc != "failed to open file '${tmp}/x'" || e.Value != `{"error":{"class":"GenericError"},"id":3}` {
		t.Errorf("error reply %+v", e)
	}
	g, obj := n.reply([]byte("not json"))
	if g.Class != "not-json" || obj != nil || g.Value != "not json" {
		t.Errorf("garbage reply %+v", g)
	}
}

func TestCompare(t *testing.T) {
	ret := func(v string) Reply { return Reply{Class: "return", Value: v} }
	errR := func(class, desc string) Reply {
		return Reply{Class: "error:" + class, Value: `{"error":{"class":"` + class + `"}}`, Desc: desc}
	}
	cases := []struct {
		name string
		a, b Outcome
		want []Kind
	}{
		{"same", Outcome{Replies: []Reply{ret("1")}}, Outcome{Replies: []Reply{ret("1")}}, nil},
		{"count", Outcome{Replies: []Reply{ret("1"), ret("2")}}, Outcome{Replies: []Reply{ret("1")}}, []Kind{KindClass}},
		{"return vs error", Outcome{Replies: []Reply{ret("1")}}, Outcome{Replies: []Reply{errR("GenericError", "x")}}, []Kind{KindClass}},
		{"error classes", Outcome{Replies: []Reply{errR("CommandNotFound", "x")}}, Outcome{Replies: []Reply{errR("GenericError", "x")}}, []Kind{KindClass}},
		{"value", Outcome{Replies: []Reply{ret("1")}}, Outcome{Replies: []Reply{ret("2")}}, []Kind{KindValue}},
		{"desc", Outcome{Replies: []Reply{errR("GenericError", "x")}}, Outcome{Replies: []Reply{errR("GenericError", "y")}}, []Kind{KindDesc}},
		{"problem", Outcome{Replies: []Reply{ret("1")}, Problem: "swallowed"}, Outcome{Replies: []Reply{ret("1")}}, []Kind{KindClass}},
		{"no replies", Outcome{}, Outcome{}, nil},
	}
	for _, c := range cases {
		got := compare(c.a, c.b)
		var kinds []Kind
		for _, d := range got {
			kinds = append(kinds, d.Kind)
		}
		if strings.Join(kindStrings(kinds), ",") != strings.Join(kindStrings(c.want), ",") {
			t.Errorf("%s: differences %v, want kinds %v", c.name, got, c.want)
		}
	}
}

func kindStrings(ks []Kind) []string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return s
}

func TestPrintable(t *testing.T) {
	if got := printable([]byte("a\xff\n\x01b"), 100); got != `a\xff\n\x01b` {
		t.Errorf("printable = %q", got)
	}
	if got := printable([]byte(strings.Repeat("[", 1000)), 100); got != "[…(×1000)" {
		t.Errorf("a run of brackets = %q", got)
	}
}

// agents returns our agent and the reference, or skips when one is missing.
func agents(t *testing.T) (string, string) {
	t.Helper()
	ours := os.Getenv("QGA_BIN")
	if ours == "" {
		ours = filepath.Join(repoRoot(), "bin", "qga")
	}
	for _, b := range []string{ours, "/usr/sbin/qemu-ga"} {
		if _, err := os.Stat(b); err != nil {
			t.Skipf("%s: %v (make agent; scripts/install-deps.sh test)", b, err)
		}
	}
	return ours, "/usr/sbin/qemu-ga"
}

// runOnHost runs corpus c on this host against agent binaries a and b, each in its own
// directory, and stops them when it returns.
func runOnHost(t *testing.T, ctx context.Context, c *Corpus, a, b string, entryTimeout time.Duration) *Result {
	t.Helper()
	tmp := t.TempDir()
	ha, err := StartHost(ctx, "A", a, filepath.Join(tmp, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	hb, err := StartHost(ctx, "B", b, filepath.Join(tmp, "b"))
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	res, err := Run(ctx, c, ModeHost, ha.Target, hb.Target, Options{EntryTimeout: entryTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// A real run on the host against ours and the reference: a command only the reference
// implements is a class difference, guest-info without normalisation a value difference (the
// versions differ), a documented one does not fail the run, and the file entries run through
// saved handles in each agent's own directory.
func TestHostRun(t *testing.T) {
	ours, ref := agents(t)
	dir := writeCorpus(t, `{"norm": {"guest-file-open": {"return": "handle"}}, "entries": [
		{"name": "ping", "send": {"execute": "guest-ping", "id": 1}},
		{"name": "osinfo", "send": {"execute": "guest-get-osinfo"}},
		{"name": "info-raw", "send": {"execute": "guest-info"}},
		{"name": "open", "send": {"execute": "guest-file-open", "arguments": {"path": "${tmp}/f", "mode": "w+"}}, "save": {"h": "return"}},
		{"name": "write", "send": {"execute": "guest-file-write", "arguments": {"handle": "${h}", "buf-b64": "aGk="}}},
		{"name": "missing", "send": {"execute": "guest-file-open", "arguments": {"path": "${tmp}/none"}}},
		{"name": "partial", "raw": ["{\"execute\":"], "flush": true},
		{"name": "shutdown", "send": {"execute": "guest-shutdown"}}
	]}`, `{"documented": [{"entry": "t/osinfo", "reason": "not a seed command"}]}`)
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res := runOnHost(t, ctx, c, ours, ref, 20*time.Second)
	byID := map[string]EntryResult{}
	for _, e := range res.Entries {
		byID[e.ID] = e
	}
	kinds := func(id string) string {
		var ks []string
		for _, d := range byID[id].Diffs {
			k := string(d.Kind)
			if d.Documented != "" {
				k += "(documented)"
			}
			ks = append(ks, k)
		}
		return strings.Join(ks, ",")
	}
	for id, want := range map[string]string{
		"t/ping": "", "t/open": "", "t/write": "", "t/missing": "", "t/partial": "",
		"t/osinfo":   "class(documented)",
		"t/info-raw": "value",
	} {
		if got := kinds(id); got != want {
			t.Errorf("%s: differences %q, want %q (A %+v, B %+v)", id, got, want, byID[id].A, byID[id].B)
		}
	}
	if s := byID["t/shutdown"].Skipped; s == "" {
		t.Error("guest-shutdown ran on the host")
	}
	if w := byID["t/write"].A; w == nil || len(w.Replies) != 1 || w.Replies[0].Value != `{"return":{"count":2,"eof":false}}` {
		t.Errorf("the write through the saved handle: %+v", w)
	}
	if m := byID["t/missing"].A; m == nil || len(m.Replies) != 1 || !strings.Contains(m.Replies[0].Desc, "'${tmp}/none'") {
		t.Errorf("the scratch directory is not written ${tmp}: %+v", m)
	}
	if p := byID["t/partial"].A; p == nil || len(p.Replies) != 1 || !strings.Contains(p.Replies[0].Desc, "stray") || p.Problem != "" {
		t.Errorf("the flushed partial request: %+v", p)
	}
	if res.A.Version == res.B.Version || res.B.Version == "" {
		t.Errorf("versions A %q B %q", res.A.Version, res.B.Version)
	}
	if !res.Failed() || res.Summary.Value != 1 || res.Summary.Class != 0 || res.Summary.Documented != 1 {
		t.Errorf("summary %+v, failed %v: want one value difference (failing) and one documented", res.Summary, res.Failed())
	}
	out := t.TempDir()
	if err := WriteFiles(res, out, "diff"); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(out, "diff.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"**Result: FAIL**", "### t/info-raw (guest-info)", "> documented: not a seed command", "| `t/shutdown` | guest-shutdown | skipped: guest-shutdown is not safe in host mode |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("diff.md lacks %q", want)
		}
	}
	var back Result
	b, err := os.ReadFile(filepath.Join(out, "diff.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil || len(back.Entries) != len(res.Entries) {
		t.Errorf("diff.json does not read back: %v", err)
	}
}

// A request the agent swallows (it leaves the parser inside a string, without flush) costs
// one entry timeout and a resynchronisation, and the run goes on.
func TestSwallowedMarkerResyncs(t *testing.T) {
	ours, _ := agents(t)
	c, err := Load(writeCorpus(t, `{"entries": [
		{"name": "open-string", "raw": ["{\"execute\":\"guest-"]},
		{"name": "ping", "send": {"execute": "guest-ping"}}
	]}`, ""))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := runOnHost(t, ctx, c, ours, ours, 5*time.Second)
	first, second := res.Entries[0], res.Entries[1]
	if first.A == nil || !strings.Contains(first.A.Problem, "no reply to the end-of-entry marker") {
		t.Errorf("the swallowed marker was not noticed: %+v", first.A)
	}
	if len(first.Diffs) != 0 {
		t.Errorf("the same agent twice differs: %+v", first.Diffs)
	}
	if second.A == nil || len(second.A.Replies) != 1 || second.A.Replies[0].Value != `{"return":{}}` || second.A.Problem != "" {
		t.Errorf("the entry after the resync: %+v", second.A)
	}
}

// An agent that exits instead of listening is reported as such, without waiting for the
// socket's timeout.
func TestStartHostAgentExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := StartHost(ctx, "A", "/bin/false", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "exited before listening (exit status 1)") {
		t.Errorf("StartHost(/bin/false) = %v, want an early exit with its status", err)
	}
}
