package dispatch

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch/reftest"
	"github.com/qgakit/qgakit/schema"
)

// These tests replay the expectations of dispatch_test.go against qemu-ga 7.2 itself, so that
// the expectations are provably the reference's and not a reading of its source.

func TestMatchesReference(t *testing.T) {
	ref := reftest.Start(t, "")
	for _, c := range requestCases {
		r := ref.Do(t, c.req)
		if r.Err == nil || r.Err.Class != c.class || r.Err.Desc != c.desc {
			t.Errorf("reference answers %s with %+v, the test expects %s %q", c.req, r, c.class, c.desc)
		}
	}
	for _, c := range argCases {
		r := ref.Do(t, c.req)
		if r.Err == nil || r.Err.Class != generic || r.Err.Desc != c.desc {
			t.Errorf("reference answers %s with %+v, the test expects %q", c.req, r, c.desc)
		}
	}
	for _, id := range []string{`1`, `"s"`, `null`, `{"a":[1]}`, `[1,2]`, `true`} {
		want, _ := reftest.Decode([]byte(id))
		for _, req := range []string{`{"execute":"guest-sync","id":` + id + `}`, `{"id":` + id + `}`} {
			if r := ref.Do(t, req); !r.HasID || !reflect.DeepEqual(r.ID, want) {
				t.Errorf("reference: %s → id %#v (present %v)", req, r.ID, r.HasID)
			}
		}
	}
}

// orderedJSON writes an arguments object with its members in the given order.
func orderedJSON(cmd string, members [][2]string) string {
	var b strings.Builder
	b.WriteString(`{"execute":"` + cmd + `","arguments":{`)
	for i, m := range members {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", m[0], m[1])
	}
	b.WriteString("}}")
	return b.String()
}

// TestUnexpectedMemberMatchesReference checks, on random sets of extra members (up to sizes
// that make the reference's hash table grow and shrink), that the member named in "Parameter
// '%s' is unexpected" is the one the reference names.
func TestUnexpectedMemberMatchesReference(t *testing.T) {
	ref := reftest.Start(t, "")
	d, _ := newAll(t, Options{})
	rng := rand.New(rand.NewSource(1))
	alphabet := "abcdefghijklmnopqrstuvwxyz-_0123456789"
	commands := []struct {
		name  string
		given [][2]string // valid schema members, visited (and removed) before the check
	}{
		{"guest-ping", nil},
		{"guest-file-close", [][2]string{{"handle", "1"}}},
		{"guest-file-seek", [][2]string{{"handle", "1"}, {"offset", "0"}, {"whence", `"set"`}}},
	}
	for i := 0; i < 300; i++ {
		c := commands[i%len(commands)]
		n := 1 + rng.Intn(40)
		seen := map[string]bool{}
		for _, g := range c.given {
			seen[g[0]] = true
		}
		var keys []string
		for len(keys) < n {
			l := 1 + rng.Intn(8)
			k := make([]byte, l)
			for j := range k {
				k[j] = alphabet[rng.Intn(len(alphabet))]
			}
			if !seen[string(k)] {
				seen[string(k)] = true
				keys = append(keys, string(k))
			}
		}
		members := append([][2]string(nil), c.given...)
		for _, k := range keys {
			members = append(members, [2]string{k, "1"})
		}
		// Members that share a QDict bucket are ordered by insertion in the reference and by
		// name here; sending them in descending name order makes both agree.
		sort.Slice(members, func(a, b int) bool { return members[a][0] > members[b][0] })
		req := orderedJSON(c.name, members)
		r := ref.Do(t, req)
		resp, _ := d.Dispatch(context.Background(), parse(t, req))
		if r.Err == nil || resp.Err == nil || r.Err.Desc != resp.Err.Desc {
			t.Errorf("%s:\nreference %+v\n     ours %+v", req, r.Err, resp.Err)
		}
	}
}

// TestStartsFrozenLikeReference starts both with a frozen marker in the state directory and a
// block list, and compares what each command gets.
func TestStartsFrozenLikeReference(t *testing.T) {
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "qga.state.isfrozen"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ref := reftest.Start(t, state, "-b", "guest-ping,guest-info")
	d, _ := newAll(t, Options{Frozen: func() bool { return true }, Blocked: []string{"guest-ping", "guest-info"}})
	for _, c := range schema.MustLoad().Commands {
		if contains(FrozenAllowlist, c.Name) && c.Name != "guest-ping" && c.Name != "guest-info" {
			continue // these would run; their results are other tests' business
		}
		req := `{"execute":"` + c.Name + `"}`
		r := ref.Do(t, req)
		resp, _ := d.Dispatch(context.Background(), parse(t, req))
		if r.Err == nil || resp.Err == nil || *r.Err != *resp.Err {
			t.Errorf("%s:\nreference %+v\n     ours %+v", c.Name, r.Err, resp.Err)
		}
	}
	r := ref.Execute(t, "guest-fsfreeze-status", nil)
	if r.Return != "frozen" {
		t.Errorf("reference did not start frozen: %+v", r)
	}
}

// TestRequestMemberOrderMatchesReference mixes faulty and unknown members in one request
// object: which fault is reported depends on the reference's QDict order.
func TestRequestMemberOrderMatchesReference(t *testing.T) {
	ref := reftest.Start(t, "")
	d, _ := newAll(t, Options{})
	rng := rand.New(rand.NewSource(2))
	extras := []string{"foo", "exec-oob", "control", "a", "zz", "arguments2", "ID", "Execute", "x-y"}
	for i := 0; i < 400; i++ {
		var members [][2]string
		switch rng.Intn(3) {
		case 0:
			members = append(members, [2]string{"execute", `"guest-ping"`})
		case 1:
			members = append(members, [2]string{"execute", `5`})
		}
		switch rng.Intn(3) {
		case 0:
			members = append(members, [2]string{"arguments", `{}`})
		case 1:
			members = append(members, [2]string{"arguments", `[]`})
		}
		if rng.Intn(2) == 0 {
			members = append(members, [2]string{"id", `1`})
		}
		for _, e := range extras {
			if rng.Intn(4) == 0 {
				members = append(members, [2]string{e, `1`})
			}
		}
		sort.Slice(members, func(a, b int) bool { return members[a][0] > members[b][0] })
		var b strings.Builder
		b.WriteByte('{')
		for j, m := range members {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%q:%s", m[0], m[1])
		}
		b.WriteByte('}')
		req := b.String()
		r := ref.Do(t, req)
		resp, _ := d.Dispatch(context.Background(), parse(t, req))
		if (r.Err == nil) != (resp.Err == nil) || (r.Err != nil && *r.Err != *resp.Err) {
			t.Errorf("%s:\nreference %+v\n     ours %+v", req, r.Err, resp.Err)
		}
	}
}
