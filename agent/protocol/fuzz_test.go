package protocol

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// Seeds beyond testdata/fuzz: every small wire case.
func addWireSeeds(f *testing.F) {
	for _, c := range wireCases {
		if c.Gen == nil && len(c.In) < 4096 {
			f.Add([]byte(c.In))
		}
	}
}

// FuzzDecoder checks that the decoder never panics, emits no more messages than the input
// could hold, keeps its state bounded by the input and the limits, does not depend on how the
// input is cut into reads, and that every decoded value survives encoding and decoding again.
func FuzzDecoder(f *testing.F) {
	addWireSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var whole []Message
		d := NewDecoder()
		d.Feed(data, func(m Message) { whole = append(whole, m) })

		// Each message has at least one token of its own, and each token at least one byte.
		if len(whole) > len(data) {
			t.Fatalf("%d messages from %d bytes", len(whole), len(data))
		}
		if len(d.tok) > len(data) || d.count > len(data) || len(d.p.stack) > MaxNesting {
			t.Fatalf("state beyond the input: token %d bytes, %d tokens, %d frames for %d input bytes",
				len(d.tok), d.count, len(d.p.stack), len(data))
		}

		// The same bytes in reads of varying sizes give the same messages.
		var cut []Message
		d2 := NewDecoder()
		for i, n := 0, 1; i < len(data); n = n%7 + 1 {
			j := min(i+n, len(data))
			d2.Feed(data[i:j], func(m Message) { cut = append(cut, m) })
			i = j
		}
		if !reflect.DeepEqual(whole, cut) {
			t.Fatalf("chunked input decodes differently:\nwhole %#v\ncut   %#v", whole, cut)
		}

		for _, m := range whole {
			if m.Err != nil {
				if m.Err.Class != ClassGenericError || !strings.HasPrefix(m.Err.Desc, "JSON ") {
					t.Fatalf("unexpected error %+v", m.Err)
				}
				continue
			}
			checkRoundTrip(t, m.Value)
		}
	})
}

// checkRoundTrip encodes v, decodes the text and compares. Numbers compare by value: an
// integral double prints without a fraction and comes back as an integer. Infinities print
// as the reference prints them, "inf", which is not JSON, so values holding one are skipped.
func checkRoundTrip(t *testing.T, v any) {
	t.Helper()
	if hasInf(v) {
		return
	}
	enc := AppendValue(nil, v)
	for _, c := range enc {
		if c < 0x20 || c >= 0x7F {
			t.Fatalf("encoding of %#v is not printable ASCII: %q", v, enc)
		}
	}
	var back []Message
	NewDecoder().Feed(append(enc, ' '), func(m Message) { back = append(back, m) })
	if len(back) != 1 || back[0].Err != nil {
		t.Fatalf("%s decodes to %+v", enc, back)
	}
	if !sameValue(v, back[0].Value) {
		t.Fatalf("round trip changed the value:\nbefore %#v\nafter  %#v\ntext   %s", v, back[0].Value, enc)
	}
}

func hasInf(v any) bool {
	switch v := v.(type) {
	case float64:
		return math.IsInf(v, 0)
	case []any:
		for _, e := range v {
			if hasInf(e) {
				return true
			}
		}
	case map[string]any:
		for _, e := range v {
			if hasInf(e) {
				return true
			}
		}
	}
	return false
}

func sameValue(a, b any) bool {
	if fa, ok := asFloat(a); ok {
		fb, ok := asFloat(b)
		if !ok || fa != fb {
			return false
		}
		// Integers must come back exactly, not just as the same double.
		_, ai := a.(float64)
		_, bi := b.(float64)
		return ai || bi || reflect.DeepEqual(a, b)
	}
	switch a := a.(type) {
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !sameValue(a[i], b[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, va := range a {
			vb, ok := b[k]
			if !ok || !sameValue(va, vb) {
				return false
			}
		}
		return true
	}
	return a == b
}

func asFloat(v any) (float64, bool) {
	switch v := v.(type) {
	case int64:
		return float64(v), true
	case uint64:
		return float64(v), true
	case float64:
		return v, true
	}
	return 0, false
}

// FuzzEncoder checks string escaping on arbitrary bytes: the output is printable ASCII, valid
// JSON that encoding/json reads back to the same text when the input is ordinary UTF-8, and
// our decoder reads it back to a string that encodes to the same bytes again.
func FuzzEncoder(f *testing.F) {
	for _, s := range []string{"", "plain", "\"\\/\b\f\n\r\t", "\x00\x1f\x7f", "é€\U0001F600", "\xc0\x80",
		"\xff\xfe\x80", "\xed\xa0\x80", "\xef\xbf\xbf", "\xf4\x90\x80\x80", "\xe2\x82", strings.Repeat("0123456789", 5)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := AppendValue(nil, s)
		for _, c := range enc {
			if c < 0x20 || c >= 0x7F {
				t.Fatalf("%q encodes to non-printable ASCII: %q", s, enc)
			}
		}
		if !json.Valid(enc) {
			t.Fatalf("%q encodes to invalid JSON: %s", s, enc)
		}
		if ordinaryUTF8(s) {
			var back string
			if err := json.Unmarshal(enc, &back); err != nil || back != s {
				t.Fatalf("%q: encoding/json reads %s back as %q (%v)", s, enc, back, err)
			}
		}
		var msgs []Message
		NewDecoder().Feed(enc, func(m Message) { msgs = append(msgs, m) })
		if len(msgs) != 1 || msgs[0].Err != nil {
			t.Fatalf("%s decodes to %+v", enc, msgs)
		}
		if again := AppendValue(nil, msgs[0].Value); string(again) != string(enc) {
			t.Fatalf("%q: encoding is not stable: %s then %s", s, enc, again)
		}
	})
}

// ordinaryUTF8 is UTF-8 that both QEMU and encoding/json keep as it is: valid, without NUL
// (a C string ends there) and without the noncharacters QEMU replaces.
func ordinaryUTF8(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == 0 || !validCodepoint(r) {
			return false
		}
	}
	return true
}
