package hosttier

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Case is one row of the conformance table: an agent started with Args (after Setup), then
// Steps in order on one connection.
type Case struct {
	Name  string
	Args  []string
	Setup func(t testing.TB, f *Fixture) // before the agent starts
	Steps []Step
	// RefWrong, when set, says why the reference is wrong here: Steps run against ours only,
	// and RefSteps against the reference, to prove the claim about it.
	RefWrong string
	RefSteps []Step
	// OursOnly, when set, says why the case does not apply to the reference at all.
	OursOnly string
}

// Step sends bytes (with {{var}} expanded) and checks the replies that follow.
type Step struct {
	Send string
	// Want are the expected replies in order, compared as JSON values (member order is the
	// reference's hash order, so it does not count). A leading "\xff" means the reply must be
	// prefixed with the 0xFF sentinel.
	Want []string
	// Check, when set, gets Want's replies plus N more.
	N     int
	Check func(t testing.TB, f *Fixture, replies []Reply)
	// Save stores the last reply's "return" value as a variable.
	Save string
	// Do runs instead of (or before) Send: restart the agent, reconnect, signal it.
	Do func(t testing.TB, f *Fixture)
}

// Run runs c against a.
func (c Case) Run(t *testing.T, a Agent) {
	steps := c.Steps
	if a.Reference {
		if c.OursOnly != "" {
			t.Skipf("ours only: %s", c.OursOnly)
		}
		if c.RefWrong != "" {
			steps = c.RefSteps
		}
	}
	f := New(t, a, c.Args...)
	if c.Setup != nil {
		c.Setup(t, f)
	}
	f.Launch()
	f.Connect()
	for i, s := range steps {
		runStep(t, f, i, s)
	}
}

func runStep(t *testing.T, f *Fixture, i int, s Step) {
	t.Helper()
	f.Where = fmt.Sprintf("step %d (%q)", i, abbrev([]byte(s.Send)))
	if s.Do != nil {
		s.Do(t, f)
	}
	if s.Send != "" {
		f.Send([]byte(f.Expand(s.Send)))
	}
	var replies []Reply
	for range len(s.Want) + s.N {
		replies = append(replies, f.Read())
	}
	for j, w := range s.Want {
		w = f.Expand(w)
		if err := match(replies[j], w); err != nil {
			t.Fatalf("step %d (%q), reply %d: %v", i, abbrev([]byte(s.Send)), j, err)
		}
	}
	if s.Check != nil {
		s.Check(t, f, replies)
	}
	if s.Save != "" && len(replies) > 0 {
		f.Vars[s.Save] = replies[len(replies)-1].Return()
	}
}

// match compares a reply with an expected JSON text.
func match(r Reply, want string) error {
	delimited := strings.HasPrefix(want, "\xff")
	w, err := decodeJSON([]byte(strings.TrimPrefix(want, "\xff")))
	if err != nil {
		return fmt.Errorf("bad expectation %q: %w", want, err)
	}
	if r.Delimited != delimited || !reflect.DeepEqual(r.Obj, w) {
		return fmt.Errorf("got %q, want %q", abbrev(r.Raw), want)
	}
	return nil
}

// Helpers that build expected replies.

// Ok is a success reply with the JSON text v.
func Ok(v string) string { return `{"return": ` + v + `}` }

// GenErr is a GenericError reply.
func GenErr(desc string) string { return errReply("GenericError", desc) }

// NotFound is a CommandNotFound reply.
func NotFound(desc string) string { return errReply("CommandNotFound", desc) }

// ParseErr is the reply to bad JSON.
func ParseErr(msg string) string { return GenErr("JSON parse error, " + msg) }

func errReply(class, desc string) string {
	return fmt.Sprintf(`{"error": {"class": %q, "desc": %s}}`, class, jsonString(desc))
}

// jsonString quotes s for JSON, escaping what Go's %q would write differently.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r >= 0x7f:
			if r > 0xffff {
				r -= 0x10000
				fmt.Fprintf(&b, `\u%04X\u%04X`, 0xD800+(r>>10), 0xDC00+(r&0x3ff))
			} else {
				fmt.Fprintf(&b, `\u%04X`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
