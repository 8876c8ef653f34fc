package protocol

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// refReply answers a decoded message the way qemu-ga 7.2's qmp_dispatch() does, for the few
// commands the wire cases use (guest-ping, guest-sync, and commands that do not exist). It
// stands in for agent/dispatch so that this package's tests compare whole replies.
func refReply(m Message) Response {
	if m.Err != nil {
		return Response{Err: m.Err}
	}
	obj, ok := m.Value.(map[string]any)
	if !ok {
		return Response{Err: Errorf("QMP input must be a JSON object")}
	}
	var r Response
	r.ID, r.HasID = obj["id"]
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sortQDictKeys(keys)
	for _, k := range keys {
		switch k {
		case "execute":
			if _, ok := obj[k].(string); !ok {
				r.Err = Errorf("QMP input member 'execute' must be a string")
				return r
			}
		case "arguments":
			if _, ok := obj[k].(map[string]any); !ok {
				r.Err = Errorf("QMP input member 'arguments' must be an object")
				return r
			}
		case "id":
		default:
			r.Err = Errorf("QMP input member '%s' is unexpected", k)
			return r
		}
	}
	name, ok := obj["execute"].(string)
	if !ok {
		r.Err = Errorf("QMP input lacks member 'execute'")
		return r
	}
	args, _ := obj["arguments"].(map[string]any)
	switch name {
	case "guest-ping":
		for k := range args {
			r.Err = Errorf("Parameter '%s' is unexpected", k)
			return r
		}
	case "guest-sync":
		id, ok := args["id"].(int64)
		if !ok {
			r.Err = Errorf("test dispatcher: guest-sync without an integer id")
			return r
		}
		r.Return = id
	default:
		r.Err = &Error{Class: ClassCommandNotFound, Desc: fmt.Sprintf("The command %s has not been found", name)}
	}
	return r
}

// replies feeds the chunks to a decoder and returns the reply lines (without "\n").
func replies(d *Decoder, chunks ...[]byte) []string {
	var out []string
	for _, c := range chunks {
		d.Feed(c, func(m Message) {
			b := AppendResponse(nil, ptr(refReply(m)))
			out = append(out, string(b[:len(b)-1]))
		})
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// chunkings returns ways to cut b into reads: whole, and for short inputs byte by byte and at
// every position, and some random cuts.
func chunkings(b []byte, rng *rand.Rand) [][][]byte {
	out := [][][]byte{{b}}
	if len(b) <= 4096 {
		var bytewise [][]byte
		for i := range b {
			bytewise = append(bytewise, b[i:i+1])
		}
		out = append(out, bytewise)
	}
	if len(b) <= 300 {
		for i := 1; i < len(b); i++ {
			out = append(out, [][]byte{b[:i], b[i:]})
		}
	}
	// qemu-ga reads 4096 bytes at a time.
	var reads [][]byte
	for rest := b; len(rest) > 0; {
		n := min(4096, len(rest))
		reads = append(reads, rest[:n])
		rest = rest[n:]
	}
	out = append(out, reads)
	random := 3
	if len(b) > 1<<20 {
		random = 1 // tens of MiB: each way costs a fraction of a second
	}
	for range random {
		var cuts [][]byte
		for rest := b; len(rest) > 0; {
			n := min(1+rng.IntN(max(1, len(b)/3)), len(rest))
			cuts = append(cuts, rest[:n])
			rest = rest[n:]
		}
		out = append(out, cuts)
	}
	return out
}

// summarize shows reply lines compactly: long lines cut, runs of the same line counted.
func summarize(lines []string) string {
	var sb strings.Builder
	for i := 0; i < len(lines); {
		j := i
		for j < len(lines) && lines[j] == lines[i] {
			j++
		}
		l := lines[i]
		if len(l) > 200 {
			l = fmt.Sprintf("%s…(%d bytes)", l[:200], len(l))
		}
		if j-i > 1 {
			fmt.Fprintf(&sb, "  %s  ×%d\n", l, j-i)
		} else {
			fmt.Fprintf(&sb, "  %s\n", l)
		}
		i = j
	}
	return sb.String()
}

func TestWireCases(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range wireCases {
		t.Run(c.Name, func(t *testing.T) {
			if c.Big && testing.Short() {
				t.Skip("large input; skipped with -short")
			}
			in := []byte(c.input() + "\n" + syncRequest(1) + "\n")
			want := append(slices.Clip(c.Want), syncReply(1))
			for _, chunks := range chunkings(in, rng) {
				got := replies(NewDecoder(), chunks...)
				if !slices.Equal(got, want) {
					t.Fatalf("input fed in %d chunks\ngot:\n%swant:\n%s", len(chunks), summarize(got), summarize(want))
				}
			}
		})
	}
}

func TestSplitAtEveryByte(t *testing.T) {
	for _, req := range splitRequests {
		in := []byte(req + "\n" + syncRequest(1) + "\n")
		want := replies(NewDecoder(), in)
		if len(want) < 2 || want[len(want)-1] != syncReply(1) {
			t.Fatalf("%q: whole input gives %q", req, want)
		}
		for i := 0; i <= len(in); i++ {
			if got := replies(NewDecoder(), in[:i], in[i:]); !slices.Equal(got, want) {
				t.Fatalf("%q cut at %d: got %q, want %q", req, i, got, want)
			}
		}
	}
}

// The decoded types are the ones the package documents.
func TestDecodedTypes(t *testing.T) {
	in := `{"i":-5,"big":9223372036854775807,"u":9223372036854775808,"f":1.5,"e":1e2,"huge":18446744073709551616,` +
		`"s":"x","t":true,"n":null,"l":[],"o":{},"neg":-9223372036854775808}`
	want := map[string]any{
		"i": int64(-5), "big": int64(math.MaxInt64), "u": uint64(1 << 63), "f": 1.5, "e": 100.0,
		"huge": 18446744073709551616.0, "s": "x", "t": true, "n": nil, "l": []any{}, "o": map[string]any{},
		"neg": int64(math.MinInt64),
	}
	var got []Message
	NewDecoder().Feed([]byte(in), func(m Message) { got = append(got, m) })
	if len(got) != 1 || got[0].Err != nil {
		t.Fatalf("got %+v", got)
	}
	if !reflect.DeepEqual(got[0].Value, want) {
		t.Fatalf("got %#v\nwant %#v", got[0].Value, want)
	}
}

// Escapes decode to the bytes the reference keeps: modified UTF-8, so \u0000 is C0 80.
func TestDecodedStrings(t *testing.T) {
	for in, want := range map[string]string{
		`"a\u0000b"`:                       "a\xc0\x80b",
		`"\ud83d\ude00"`:                   "\xf0\x9f\x98\x80",
		`'\'\"\/'`:                         `'"/`,
		"\"\xc0\x80\"":                     "\xc0\x80",
		`"\u00e9\u20AC"`:                   "é€",
		`"` + "\x7f\xf4\x8f\xbf\xbd" + `"`: "\x7f\xf4\x8f\xbf\xbd",
	} {
		var got []Message
		NewDecoder().Feed([]byte(in), func(m Message) { got = append(got, m) })
		if len(got) != 1 || got[0].Value != want {
			t.Errorf("%s: got %+v, want %q", in, got, want)
		}
	}
}

// Large strings keep the buffer they were decoded in; what matters is that later input does
// not overwrite them.
func TestLargeStringsSurviveLaterInput(t *testing.T) {
	d := NewDecoder()
	var got []string
	emit := func(m Message) { got = append(got, m.Value.(string)) }
	a := strings.Repeat("a", 3*handOffMin)
	b := strings.Repeat("b", 3*handOffMin)
	d.Feed([]byte(`"`+a+`"`), emit)
	d.Feed([]byte(`"`+b+`"`), emit)
	d.Feed([]byte(`"x"`), emit)
	if len(got) != 3 || got[0] != a || got[1] != b || got[2] != "x" {
		t.Fatalf("strings changed after later input")
	}
}

func TestZeroDecoderAndReset(t *testing.T) {
	var d Decoder
	if got := replies(&d, []byte(ping)); !slices.Equal(got, []string{pong}) {
		t.Fatalf("zero Decoder: %q", got)
	}
	// A partial message and a partial token are both dropped.
	replies(&d, []byte(`[1, {"a": "par`))
	d.Reset()
	if got := replies(&d, []byte(ping)); !slices.Equal(got, []string{pong}) {
		t.Fatalf("after Reset: %q", got)
	}
	// So is lexer recovery: without Reset the '1' would be skipped.
	replies(&d, []byte("@"))
	d.Reset()
	if got := replies(&d, []byte("1 ")); !slices.Equal(got, []string{notObj}) {
		t.Fatalf("recovery survived Reset: %q", got)
	}
}

// After a nesting-limit error, the reference keeps counting the brackets that follow in the
// same breath, so a rejected request with more opening brackets than the limit swallows the
// next requests (see TestReferenceNestingDeviation). This decoder drops that leftover at the
// end of the line and answers the next request.
func TestNestingErrorDoesNotSwallowNextRequest(t *testing.T) {
	in := strings.Repeat("[", 1026) + "\n" + ping + "\n]\n"
	got := replies(NewDecoder(), []byte(in))
	want := []string{gerr("JSON nesting depth limit exceeded"), pong, perr("expecting value")}
	if !slices.Equal(got, want) {
		t.Fatalf("got:\n%swant:\n%s", summarize(got), summarize(want))
	}
	// Whatever the rest of that line holds, what is still open at its end is dropped.
	in = strings.Repeat("[", 1025) + "[] [\n" + ping + "\n"
	got = replies(NewDecoder(), []byte(in))
	want = []string{gerr("JSON nesting depth limit exceeded"), notObj, pong}
	if !slices.Equal(got, want) {
		t.Fatalf("got:\n%swant:\n%s", summarize(got), summarize(want))
	}
	// The line of the error only: a message that starts after the line end is untouched.
	in = strings.Repeat("[", 1026) + "\n[\n1\n]\n"
	got = replies(NewDecoder(), []byte(in))
	want = []string{gerr("JSON nesting depth limit exceeded"), notObj}
	if !slices.Equal(got, want) {
		t.Fatalf("got:\n%swant:\n%s", summarize(got), summarize(want))
	}
}

// A message that can no longer fit frees its values while its last token is still arriving:
// the decoder never holds more than about one message's worth.
func TestDoomedMessageReleasesValues(t *testing.T) {
	d := NewDecoder()
	var got []Message
	emit := func(m Message) { got = append(got, m) }
	big := strings.Repeat("A", 40<<20)
	d.Feed([]byte(`["`+big+`",`), emit)
	if len(d.p.stack) != 1 || len(d.p.stack[0].arr) != 1 {
		t.Fatalf("first string not held: %d frames", len(d.p.stack))
	}
	d.Feed([]byte(`"`+big[:30<<20]), emit)
	if len(d.p.stack) != 0 || !d.p.failed {
		t.Fatalf("values still held (%d frames) by a message that cannot fit", len(d.p.stack))
	}
	d.Feed([]byte(`"]`), emit)
	if len(got) != 2 || got[0].Err.Desc != "JSON token size limit exceeded" || got[1].Err.Desc != "JSON parse error, expecting value" {
		t.Fatalf("got %+v", got)
	}
	if cap(d.tok) > keepTokenBuffer {
		t.Fatalf("token buffer of %d bytes kept after the message", cap(d.tok))
	}
}

// Parsing is linear and allocates per value, not per token: a 2 Mi-token list of small
// integers costs a handful of allocations (the list growing), whatever its length.
func TestManyTokensAllocations(t *testing.T) {
	in := []byte("[" + strings.Repeat("1,", MaxTokenCount/2-2) + "1]")
	d := NewDecoder()
	n := 0
	allocs := testing.AllocsPerRun(2, func() {
		d.Feed(in, func(m Message) {
			if m.Err != nil {
				t.Fatalf("error: %s", m.Err.Desc)
			}
			n = len(m.Value.([]any))
		})
	})
	if n != MaxTokenCount/2-1 {
		t.Fatalf("got %d elements", n)
	}
	if allocs > 100 {
		t.Fatalf("%v allocations for one list of small integers", allocs)
	}
}
