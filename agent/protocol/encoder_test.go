package protocol

import (
	"encoding/base64"
	"math"
	"strings"
	"testing"
)

func TestAppendString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `""`},
		{"plain text, long enough for the word-at-a-time path", `"plain text, long enough for the word-at-a-time path"`},
		{`"\`, `"\"\\"`},
		{"\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"\x00\x01\x0b\x1f", `"\u0000\u0001\u000B\u001F"`},
		{"/", `"/"`},
		{"\x7f", `"\u007F"`},
		{"é€", `"\u00E9\u20AC"`},
		{"\U0001F600", `"\uD83D\uDE00"`},
		{"\U0010FFFD", `"\uDBFF\uDFFD"`},
		{"\xc0\x80", `"\u0000"`},                       // modified UTF-8 NUL
		{"\x80", `"\uFFFD"`},                           // stray continuation byte
		{"\xc3", `"\uFFFD"`},                           // truncated at the end
		{"\xe2\x82a", `"\uFFFDa"`},                     // truncated: one U+FFFD for both bytes
		{"\xc0\xaf", `"\uFFFD"`},                       // overlong
		{"\xed\xa0\x80", `"\uFFFD"`},                   // surrogate
		{"\xef\xbf\xbf\xef\xb7\x90", `"\uFFFD\uFFFD"`}, // noncharacters U+FFFF, U+FDD0
		{"\xf4\x90\x80\x80", `"\uFFFD"`},               // beyond U+10FFFF
		{"\xf8\x88\x80\x80\x80", `"\uFFFD"`},           // five-byte form
		{"\xfe\xff", `"\uFFFD\uFFFD"`},
		{"\xc3\x00", `"\uFFFD\u0000"`},
		{strings.Repeat("ab", 20) + "\n" + strings.Repeat("cd", 20), `"` + strings.Repeat("ab", 20) + `\n` + strings.Repeat("cd", 20) + `"`},
	} {
		if got := string(appendString(nil, tc.in)); got != tc.want {
			t.Errorf("%q: got %s, want %s", tc.in, got, tc.want)
		}
	}
	// Every byte that needs escaping is found wherever it sits in an eight-byte block.
	for c := 0; c < 256; c++ {
		if plainASCII[c] {
			continue
		}
		for pos := 0; pos < 40; pos++ {
			b := []byte(strings.Repeat("x", 40))
			b[pos] = byte(c)
			got := string(appendString(nil, string(b)))
			if strings.Contains(got, string([]byte{byte(c)})) && c != '"' && c != '\\' {
				t.Fatalf("byte %#x at %d copied raw: %q", c, pos, got)
			}
			if c == '"' && !strings.Contains(got, `\"`) || c == '\\' && !strings.Contains(got, `\\`) {
				t.Fatalf("byte %#x at %d not escaped: %q", c, pos, got)
			}
		}
	}
}

// Expected texts printed by glibc's printf("%.17g") on this machine (the reference's json-writer).
func TestAppendFloat(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		want string
	}{
		{0.1, "0.10000000000000001"},
		{1e16, "10000000000000000"},
		{1e17, "1e+17"},
		{1e-5, "1.0000000000000001e-05"},
		{math.Copysign(0, -1), "-0"},
		{0, "0"},
		{5e-324, "4.9406564584124654e-324"},
		{math.MaxFloat64, "1.7976931348623157e+308"},
		{123456789.123, "123456789.123"},
		{0.5, "0.5"},
		{100, "100"},
		{1e21, "1e+21"},
		{1e-4, "0.0001"},
		{0.0001234, "0.00012339999999999999"},
		{2.5e-7, "2.4999999999999999e-07"},
		{3.14159, "3.1415899999999999"},
		{123456789012345678, "1.2345678901234568e+17"},
		{-1.5e-10, "-1.5e-10"},
		{2.2250738585072014e-308, "2.2250738585072014e-308"},
		{9007199254740993, "9007199254740992"},
		{math.Inf(1), "inf"},
		{math.Inf(-1), "-inf"},
		{math.NaN(), "nan"},
	} {
		if got := string(AppendValue(nil, tc.f)); got != tc.want {
			t.Errorf("%v: got %s, want %s", tc.f, got, tc.want)
		}
	}
}

type level int

type inner struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

type embedded struct {
	Handle int64 `json:"handle"`
}

type sample struct {
	embedded
	Count    int               `json:"count"`
	Buf      string            `json:"buf-b64"`
	EOF      bool              `json:"eof"`
	Opt      *int64            `json:"opt,omitempty"`
	OptZero  *int64            `json:"opt-zero,omitempty"`
	Empty    string            `json:"empty,omitempty"`
	Skipped  string            `json:"-"`
	Dash     string            `json:"-,"` //nolint:staticcheck // SA5008: "-," names the field "-" in encoding/json, a rule the encoder must follow too.
	Untagged uint32            //
	Level    level             `json:"level"`
	List     []inner           `json:"list"`
	NilList  []string          `json:"nil-list"`
	Map      map[string]uint64 `json:"map"`
	Any      any               `json:"any"`
	hidden   int
}

func TestAppendValue(t *testing.T) {
	zero := int64(0)
	type args map[string]any
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{"nil", nil, "null"},
		{"bools", []any{true, false}, "[true, false]"},
		{"integers", []any{int64(math.MinInt64), uint64(math.MaxUint64), int(-1), int32(math.MinInt32), uint32(math.MaxUint32), int8(-8), uint16(16)},
			"[-9223372036854775808, 18446744073709551615, -1, -2147483648, 4294967295, -8, 16]"},
		{"float32", float32(0.5), "0.5"},
		{"empty containers", []any{[]any{}, map[string]any{}, []string(nil), map[string]int(nil)}, "[[], {}, [], {}]"},
		{"QDict order", map[string]any{"b": 2, "a": 1, "class": 8, "desc": 7, "return": 4, "id": 5, "c": 3, "execute": 6},
			`{"class": 8, "a": 1, "execute": 6, "b": 2, "desc": 7, "return": 4, "c": 3, "id": 5}`},
		{"named map", args{"y": "z"}, `{"y": "z"}`},
		{"pointer", &zero, "0"},
		{"nil pointer", (*int64)(nil), "null"},
		{"string list", []string{"a", "é"}, `["a", "\u00E9"]`},
		{"array", [2]int{1, 2}, "[1, 2]"},
		{"struct", sample{
			embedded: embedded{Handle: 1}, Count: 3, Buf: "AAAA", OptZero: &zero, Skipped: "x", Dash: "d",
			Untagged: 7, Level: 2, List: []inner{{"n", 1}}, Map: map[string]uint64{"k": 1}, Any: []any{nil}, hidden: 9,
		}, `{"Untagged": 7, "list": [{"name": "n", "count": 1}], "handle": 1, "any": [null], "count": 3, "level": 2, ` +
			`"-": "d", "buf-b64": "AAAA", "eof": false, "map": {"k": 1}, "opt-zero": 0, "nil-list": []}`},
	} {
		if got := string(AppendValue(nil, tc.v)); got != tc.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// Struct members follow QDict order too: by bucket, and within a bucket the later field first,
// as the QAPI output visitor inserts members in declaration order and a bucket lists its
// newest entry first. "aa" and "aq" share bucket 110; the reference echoes the id
// {"aa":1,"aq":2} as {"aq": 2, "aa": 1}.
func TestStructFieldOrder(t *testing.T) {
	type s struct {
		ID     int    `json:"id"`
		Return string `json:"return"`
		Class  string `json:"class"`
	}
	if got, want := string(AppendValue(nil, s{})), `{"class": "", "return": "", "id": 0}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if qdictBucket("aa") != qdictBucket("aq") {
		t.Fatalf("aa and aq should share a bucket")
	}
	type collide struct {
		AA int `json:"aa"`
		AQ int `json:"aq"`
	}
	if got, want := string(AppendValue(nil, collide{1, 2})), `{"aq": 2, "aa": 1}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// A Go map has no insertion order: keys that share a bucket are sorted.
	if got, want := string(AppendValue(nil, map[string]any{"aq": 2, "aa": 1})), `{"aa": 1, "aq": 2}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestAppendValueRejectsUnsupportedTypes(t *testing.T) {
	for _, v := range []any{make(chan int), func() {}, complex(1, 2), map[int]int{1: 1}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%T encoded without a panic", v)
				}
			}()
			AppendValue(nil, v)
		}()
	}
}

func TestAppendResponse(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Response
		want string
	}{
		{"empty return", Response{}, "{\"return\": {}}\n"},
		{"return value", Response{Return: []any{int64(1)}}, "{\"return\": [1]}\n"},
		{"return with id", Response{Return: "x", ID: "abc", HasID: true}, "{\"return\": \"x\", \"id\": \"abc\"}\n"},
		{"null id", Response{HasID: true}, "{\"return\": {}, \"id\": null}\n"},
		{"error", Response{Err: Errorf("bad %d", 1), Return: "ignored"}, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad 1\"}}\n"},
		{"error with id", Response{Err: &Error{Class: ClassCommandNotFound, Desc: "x"}, ID: int64(1), HasID: true},
			"{\"id\": 1, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"x\"}}\n"},
		{"delimited", Response{Return: int64(5), Delimited: true}, "\xff{\"return\": 5}\n"},
		{"stray 0xFF", Response{Err: Errorf("JSON parse error, stray '\xff'")},
			"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n"},
	} {
		if got := string(AppendResponse([]byte("prefix:"), &tc.r)); got != "prefix:"+tc.want {
			t.Errorf("%s:\ngot  %q\nwant %q", tc.name, got, "prefix:"+tc.want)
		}
	}
}

// The guest-file-read reply carries up to 48 MiB of base64: it is copied once into the
// output buffer, without an allocation when the buffer is big enough and with exactly one
// (the output) when it is not.
func TestEncodeLargeStringCopiesOnce(t *testing.T) {
	payload := base64.StdEncoding.EncodeToString(make([]byte, 3<<20))
	type fileRead struct {
		Count  int    `json:"count"`
		BufB64 string `json:"buf-b64"`
		EOF    bool   `json:"eof"`
	}
	r := &Response{Return: fileRead{Count: 3 << 20, BufB64: payload, EOF: true}}
	buf := make([]byte, 0, len(payload)+1024)
	if n := testing.AllocsPerRun(5, func() { buf = AppendResponse(buf[:0], r) }); n > 1 {
		// One allocation is boxing the struct into reflect; none is per byte or per copy.
		t.Fatalf("%v allocations encoding into a large enough buffer", n)
	}
	want := `{"return": {"count": 3145728, "buf-b64": "` + payload + `", "eof": true}}` + "\n"
	if string(buf) != want {
		t.Fatalf("wrong encoding of the file-read reply")
	}
	var grown int
	var boxed any = payload
	if n := testing.AllocsPerRun(5, func() {
		b := AppendValue(nil, boxed)
		grown = cap(b)
	}); n != 1 {
		t.Fatalf("%v allocations encoding a %d-byte string into a nil buffer, want 1", n, len(payload))
	}
	if grown > len(payload)+8<<10 {
		t.Fatalf("buffer grew to %d for a %d-byte string", grown, len(payload))
	}
}
