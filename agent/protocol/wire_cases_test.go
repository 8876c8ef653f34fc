package protocol

import (
	"fmt"
	"strings"
)

// wireCase is one input and the replies qemu-ga 7.2 sends for it. The same list drives the
// unit tests (our decoder, encoder and a minimal dispatcher, fed in many chunkings) and the
// differential test against /usr/sbin/qemu-ga, which proves that Want is the reference's
// behaviour. To extend it, add a case, run `go test -run Reference ./agent/protocol/` where
// qemu-ga is installed, and keep Want as the reference printed it.
//
// Every case is sent followed by "\n" and a guest-sync request, whose reply ends the case, so
// each one also proves that the request after it is answered.
type wireCase struct {
	Name string
	In   string        // the bytes sent, as they are
	Gen  func() string // builds In for large inputs
	// Want are the reply lines, as the reference writes them (without "\n"), before the
	// trailing guest-sync's. Built from literal wire text, not by our encoder.
	Want []string
	Big  bool // tens of MiB: skipped with -short
}

func (c *wireCase) input() string {
	if c.Gen != nil {
		return c.Gen()
	}
	return c.In
}

// Wire text of replies. desc is given as it appears on the wire (already escaped).
func gerr(desc string) string {
	return `{"error": {"class": "GenericError", "desc": "` + desc + `"}}`
}

func perr(msg string) string { return gerr("JSON parse error, " + msg) }

func stray(text string) string { return perr("stray '" + text + "'") }

const (
	pong   = `{"return": {}}`
	ping   = `{"execute":"guest-ping"}`
	notObj = `{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}`
)

func pongID(id string) string { return `{"return": {}, "id": ` + id + `}` }

func pingID(id string) string { return `{"execute":"guest-ping","id":` + id + `}` }

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func nested(open, close string, n int) string {
	return strings.Repeat(open, n) + strings.Repeat(close, n)
}

var wireCases = []wireCase{
	// Framing.
	{Name: "ping", In: ping, Want: []string{pong}},
	{Name: "single quotes", In: `{'execute':'guest-ping'}`, Want: []string{pong}},
	{Name: "single-quoted escapes", In: `{'execute':'guest-ping','id':'it\'s "q" \"'}`,
		Want: []string{pongID(`"it's \"q\" \""`)}},
	{Name: "double-quoted apostrophe escape", In: pingID(`"\'"`), Want: []string{pongID(`"'"`)}},
	{Name: "several per read", In: pingID("1") + pingID("2") + "\n" + pingID("3"),
		Want: []string{pongID("1"), pongID("2"), pongID("3")}},
	{Name: "whitespace set", In: "\t\r\n {\"execute\"\t:\r\n\"guest-ping\" } ", Want: []string{pong}},
	{Name: "form feed is not whitespace", In: "\f" + ping, Want: []string{stray(`\f`), pong}},
	{Name: "vertical tab is not whitespace", In: "\v" + ping, Want: []string{stray(`\u000B`), pong}},
	{Name: "id of every type", In: `{"execute":"guest-ping","id":[1,"a",true,false,null,{"x":[]},1.5]}`,
		Want: []string{pongID(`[1, "a", true, false, null, {"x": []}, 1.5]`)}},
	{Name: "id member order", In: pingID(`{"a":1,"b":2,"c":3,"return":4,"id":5,"execute":6,"desc":7,"class":8}`),
		Want: []string{pongID(`{"class": 8, "a": 1, "execute": 6, "b": 2, "desc": 7, "return": 4, "c": 3, "id": 5}`)}},
	{Name: "id on an error reply comes first", In: `{"execute":"no-such-command","id":7}`,
		Want: []string{`{"id": 7, "error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}}`}},
	{Name: "exec-oob is unexpected", In: `{"exec-oob":"guest-ping"}`,
		Want: []string{gerr("QMP input member 'exec-oob' is unexpected")}},
	{Name: "no execute", In: `{"id":1}`, Want: []string{`{"id": 1, "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}`}},

	// Top-level scalars are complete messages.
	{Name: "integer", In: "5", Want: []string{notObj}},
	{Name: "string", In: `"x"`, Want: []string{notObj}},
	{Name: "empty list", In: "[]", Want: []string{notObj}},
	{Name: "keywords", In: "true false null", Want: repeat(notObj, 3)},
	{Name: "keyword then digit", In: "true1", Want: repeat(notObj, 2)},
	{Name: "scalars back to back", In: `1"a"[]{}`, Want: []string{notObj, notObj, notObj, gerr("QMP input lacks member 'execute'")}},

	// Keywords.
	{Name: "invalid keyword", In: "foo", Want: []string{perr("invalid keyword 'foo'")}},
	{Name: "keyword prefix", In: "nul", Want: []string{perr("invalid keyword 'nul'")}},
	{Name: "keywords run together", In: "truefalse", Want: []string{perr("invalid keyword 'truefalse'")}},
	{Name: "invalid keyword as value", In: `{"execute":"guest-ping","id":nan}`, Want: []string{perr("invalid keyword 'nan'")}},
	{Name: "long invalid keyword is cut at 1023 bytes", In: strings.Repeat("a", 2000),
		Want: []string{perr("invalid keyword '" + strings.Repeat("a", 1023-len("invalid keyword '")))}},
	{Name: "uppercase keyword", In: "TRUE", Want: []string{stray("T")}},

	// Stray bytes and recovery.
	{Name: "at sign", In: "@", Want: []string{stray("@")}},
	{Name: "recovery skips to a structural character", In: "@@@ abc 123", Want: []string{stray("@")}},
	{Name: "recovery stops at a comma", In: "@,@", Want: []string{stray("@"), perr("expecting value"), stray("@")}},
	{Name: "recovery stops at a brace", In: "@" + ping, Want: []string{stray("@"), pong}},
	{Name: "recovery skips tabs", In: "@\t\t@", Want: []string{stray("@")}},
	{Name: "stray inside a message", In: `{"execute":@"guest-ping"}`, Want: []string{stray("@"), perr("expecting value")}},
	{Name: "0xFF alone", In: "\xff", Want: []string{stray(`\uFFFD`)}},
	{Name: "0xFF twice", In: "\xff\xff", Want: repeat(stray(`\uFFFD`), 2)},
	{Name: "0xFF mid-message", In: `{"execute":` + "\xff" + ping, Want: []string{stray(`\uFFFD`), pong}},
	{Name: "0xFF mid-string", In: `{"execute":"guest` + "\xff" + ping, Want: []string{stray(`\"guest\uFFFD`), pong}},
	{Name: "0xFF between messages", In: ping + "\xff" + ping, Want: []string{pong, stray(`\uFFFD`), pong}},
	{Name: "0xFF after a stray byte", In: "@\xff", Want: []string{stray("@"), stray(`\uFFFD`)}},
	{Name: "0xFE", In: "\xfe" + ping, Want: []string{stray(`\uFFFD`), pong}},
	{Name: "NUL", In: "\x00", Want: []string{stray("")}},
	{Name: "NUL in a string ends the stray text", In: "\"ab\x00cd\"", Want: []string{stray(`\"ab`)}},
	{Name: "control character", In: "\x01", Want: []string{stray(`\u0001`)}},
	{Name: "control characters each draw an error", In: "\x01\x02\x1f", Want: []string{stray(`\u0001`), stray(`\u0002`), stray(`\u001F`)}},
	{Name: "DEL", In: "\x7f", Want: []string{stray(`\u007F`)}},
	{Name: "tab inside a string", In: "\"a\tb\"", Want: []string{stray(`\"a\t`)}},
	{Name: "newline ends an unterminated string", In: "\"abc\n" + ping, Want: []string{stray(`\"abc\n`), pong}},
	{Name: "invalid UTF-8 outside strings", In: "\xc3\xa9", Want: []string{stray(`\uFFFD`)}},
	{Name: "continuation byte outside strings", In: "\x80" + ping, Want: []string{stray(`\uFFFD`), pong}},
	{Name: "stray text keeps the partial string", In: "\"\xc3\xa9\xe2\x82\x01", Want: []string{stray(`\"\u00E9\uFFFD\u0001`)}},

	// Numbers.
	{Name: "int64 max", In: pingID("9223372036854775807"), Want: []string{pongID("9223372036854775807")}},
	{Name: "int64 min", In: pingID("-9223372036854775808"), Want: []string{pongID("-9223372036854775808")}},
	{Name: "beyond int64 is uint64", In: pingID("9223372036854775808"), Want: []string{pongID("9223372036854775808")}},
	{Name: "uint64 max", In: pingID("18446744073709551615"), Want: []string{pongID("18446744073709551615")}},
	{Name: "beyond uint64 is a double", In: pingID("18446744073709551616"), Want: []string{pongID("1.8446744073709552e+19")}},
	{Name: "below int64 is a double", In: pingID("-9223372036854775809"), Want: []string{pongID("-9.2233720368547758e+18")}},
	{Name: "400 digits", In: pingID("1" + strings.Repeat("0", 400)), Want: []string{pongID("inf")}},
	{Name: "overflowing double", In: pingID("1e400"), Want: []string{pongID("inf")}},
	{Name: "negative overflow", In: pingID("-1e400"), Want: []string{pongID("-inf")}},
	{Name: "underflow", In: pingID("1e-400"), Want: []string{pongID("0")}},
	{Name: "negative zero double", In: pingID("-0.0"), Want: []string{pongID("-0")}},
	{Name: "negative zero integer", In: pingID("-0"), Want: []string{pongID("0")}},
	{Name: "doubles", In: pingID("[0.1,1e16,1e17,1E-5,1.5e+3,5e-324,3.14159,2.5e-7]"),
		Want: []string{pongID("[0.10000000000000001, 10000000000000000, 1e+17, 1.0000000000000001e-05, 1500, 4.9406564584124654e-324, 3.1415899999999999, 2.4999999999999999e-07]")}},
	{Name: "leading zero", In: "01", Want: []string{stray("01")}},
	{Name: "zero then letter", In: "0a", Want: []string{notObj, perr("invalid keyword 'a'")}},
	{Name: "hex", In: "0x10", Want: []string{notObj, perr("invalid keyword 'x'"), notObj}},
	{Name: "uppercase hex", In: "0X10", Want: []string{notObj, stray("X")}},
	{Name: "lone minus", In: "-", Want: []string{stray(`-\n`)}},
	{Name: "minus space", In: "- 1", Want: []string{stray("- ")}},
	{Name: "plus", In: "+1", Want: []string{stray("+")}},
	{Name: "leading dot", In: ".5", Want: []string{stray(".")}},
	{Name: "trailing dot", In: "1.x", Want: []string{stray("1.x")}},
	{Name: "bare exponent", In: "1e", Want: []string{stray(`1e\n`)}},
	{Name: "exponent sign only", In: "1e+]", Want: []string{stray("1e+]")}},
	{Name: "number then 0xFF inside a list", In: "[12\xff", Want: []string{stray(`\uFFFD`)}},
	{Name: "number then 0xFF at top level", In: "12\xff", Want: []string{notObj, stray(`\uFFFD`)}},

	// Strings.
	{Name: "short escapes", In: pingID(`"\b\f\n\r\t\/\\\""`), Want: []string{pongID(`"\b\f\n\r\t/\\\""`)}},
	{Name: "unicode escapes", In: pingID(`"a\u0000b\u00e9\ud83d\ude00\u007f\u0041"`),
		Want: []string{pongID(`"a\u0000b\u00E9\uD83D\uDE00\u007FA"`)}},
	{Name: "raw UTF-8", In: pingID("\"\xc3\xa9\xf0\x9f\x98\x80\xe2\x82\xac\""), Want: []string{pongID(`"\u00E9\uD83D\uDE00\u20AC"`)}},
	{Name: "modified UTF-8 NUL", In: pingID("\"\xc0\x80\""), Want: []string{pongID(`"\u0000"`)}},
	{Name: "raw DEL and slash", In: pingID("\"\x7f/\""), Want: []string{pongID(`"\u007F/"`)}},
	{Name: "invalid escape", In: `"\q"`, Want: []string{perr("invalid escape sequence in string")}},
	{Name: "uppercase U escape", In: `"\U0041"`, Want: []string{perr("invalid escape sequence in string")}},
	{Name: "short \\u", In: `"\u12"`, Want: []string{perr(`\\u12\" is not a valid Unicode character`)}},
	{Name: "empty \\u", In: `"\u"`, Want: []string{perr(`\\u\" is not a valid Unicode character`)}},
	{Name: "non-hex \\u", In: `"\uZZZZ"`, Want: []string{perr(`\\uZZZZ is not a valid Unicode character`)}},
	{Name: "lone lead surrogate", In: `"\ud800"`, Want: []string{perr(`\\ud800 is not a valid Unicode character`)}},
	{Name: "lone trail surrogate", In: `"\udc00"`, Want: []string{perr(`\\udc00 is not a valid Unicode character`)}},
	{Name: "lead surrogate then letter", In: `"\ud800\u0041"`, Want: []string{perr(`\\ud800 is not a valid Unicode character`)}},
	{Name: "surrogate pair", In: `"\ud800\udc00"`, Want: []string{notObj}},
	{Name: "noncharacter pair", In: `"\uDBFF\uDFFF"`, Want: []string{perr(`\\uDBFF\\uDFFF is not a valid Unicode character`)}},
	{Name: "noncharacter FFFE", In: `"\uFFFE"`, Want: []string{perr(`\\uFFFE is not a valid Unicode character`)}},
	{Name: "noncharacter FDD0", In: `"\ufdd0"`, Want: []string{perr(`\\ufdd0 is not a valid Unicode character`)}},
	{Name: "truncated sequence", In: "\"\xc3\"", Want: []string{perr("invalid UTF-8 sequence in string")}},
	{Name: "overlong", In: "\"\xc0\xaf\"", Want: []string{perr("invalid UTF-8 sequence in string")}},
	{Name: "raw surrogate", In: "\"\xed\xa0\x80\"", Want: []string{perr("invalid UTF-8 sequence in string")}},
	{Name: "raw noncharacter", In: "\"\xef\xbf\xbf\"", Want: []string{perr("invalid UTF-8 sequence in string")}},
	{Name: "beyond U+10FFFF", In: "\"\xf4\x90\x80\x80\"", Want: []string{perr("invalid UTF-8 sequence in string")}},
	{Name: "five-byte form", In: "\"\xf8\x88\x80\x80\x80\"", Want: []string{perr("invalid UTF-8 sequence in string")}},
	{Name: "invalid UTF-8 in a key", In: "{\"\xc3\":1}", Want: []string{perr("invalid UTF-8 sequence in string")}},
	{Name: "first error wins", In: `["\q", "\u12", foo]`, Want: []string{perr("invalid escape sequence in string")}},

	// Parser errors surface when the message completes, once.
	{Name: "duplicate key", In: `{"execute":"guest-ping","id":1,"id":2}`, Want: []string{perr("duplicate key")}},
	{Name: "duplicate key checked after the value", In: `{"a":1,"a":[1 2]}`, Want: []string{perr("expected separator in list")}},
	{Name: "key not a string", In: "{1:2}", Want: []string{perr("key is not a string in object")}},
	{Name: "list as a key", In: "{[1]:2}", Want: []string{perr("key is not a string in object")}},
	{Name: "error inside a list key", In: "{[1,]:2}", Want: []string{perr("expecting value")}},
	{Name: "keyword as a key", In: "{true:1}", Want: []string{perr("key is not a string in object")}},
	{Name: "missing colon", In: `{"a" 1}`, Want: []string{perr("missing : in object pair")}},
	{Name: "missing dict separator", In: `{"a":1 "b":2}`, Want: []string{perr("expected separator in dict")}},
	{Name: "missing list separator", In: "[1 2]", Want: []string{perr("expected separator in list")}},
	{Name: "trailing comma in list", In: "[1,]", Want: []string{perr("expecting value")}},
	{Name: "trailing comma in dict", In: `{"a":1,}`, Want: []string{perr("expecting value")}},
	{Name: "missing value", In: `{"a":}`, Want: []string{perr("expecting value")}},
	{Name: "lone separators", In: "[,] {,} {:} [:]", Want: repeat(perr("expecting value"), 4)},
	{Name: "error held until the list closes", In: "[1 2 " + ping + "]", Want: []string{perr("expected separator in list")}},
	{Name: "held error dropped by a stray byte", In: "[1 2 @", Want: []string{stray("@")}},
	{Name: "error inside nested keys", In: `{"a":{"b":{"c" "d"}}}`, Want: []string{perr("missing : in object pair")}},

	// Unbalanced closers.
	{Name: "lone brace", In: "}", Want: []string{perr("expecting value")}},
	{Name: "lone bracket", In: "]", Want: []string{perr("expecting value")}},
	{Name: "bracket closed by brace", In: "[}", Want: []string{perr("expecting value")}},
	{Name: "brace closed by bracket", In: "{]", Want: []string{perr("expecting value")}},
	{Name: "mismatch then closer", In: "[}]", Want: repeat(perr("expecting value"), 2)},
	{Name: "extra closer after a request", In: ping + "}", Want: []string{pong, perr("expecting value")}},
	{Name: "brace inside a list", In: "[{]}", Want: []string{perr("expecting value")}},

	// Nesting.
	{Name: "depth 1024", In: nested("[", "]", 1024), Want: []string{notObj}},
	{Name: "depth 1024 mixed", In: nested(`{"a":[`, "]}", 512), Want: []string{gerr("QMP input member 'a' is unexpected")}},
	{Name: "depth 1025", In: nested("[", "]", 1025),
		Want: concat([]string{gerr("JSON nesting depth limit exceeded")}, repeat(perr("expecting value"), 1025))},
	{Name: "depth 1025 then more opens that close", In: nested("[", "]", 1030),
		Want: concat([]string{gerr("JSON nesting depth limit exceeded"), notObj}, repeat(perr("expecting value"), 1025))},

	// Limits.
	{Name: "token size just fits", Big: true, Gen: func() string { return `"` + strings.Repeat("A", MaxTokenSize-3) + `"` },
		Want: []string{notObj}},
	{Name: "token size one over", Big: true, Gen: func() string { return `"` + strings.Repeat("A", MaxTokenSize-2) + `"` },
		Want: []string{gerr("JSON token size limit exceeded")}},
	{Name: "token cut off by the lexer", Big: true, Gen: func() string { return `"` + strings.Repeat("A", MaxTokenSize) + `"` },
		Want: []string{gerr("JSON token size limit exceeded"), stray(`\"\n`)}},
	{Name: "token cut off, rest lexed", Big: true, Gen: func() string { return `"` + strings.Repeat("a", MaxTokenSize+1) + `"` },
		Want: []string{gerr("JSON token size limit exceeded"), perr("invalid keyword 'a'"), stray(`\"\n`)}},
	{Name: "message size over", Big: true, Gen: func() string {
		s := strings.Repeat("A", 40<<20)
		return `["` + s + `","` + s + `"]`
	}, Want: []string{gerr("JSON token size limit exceeded"), perr("expecting value")}},
	{Name: "token count just fits", Big: true, Gen: func() string { return "[" + strings.Repeat("1,", MaxTokenCount/2-2) + "[]]" },
		Want: []string{notObj}},
	{Name: "token count one over", Big: true, Gen: func() string { return "[" + strings.Repeat("1,", MaxTokenCount/2-1) + "1]" },
		Want: []string{gerr("JSON token count limit exceeded")}},
	{Name: "token count over, rest parsed", Big: true, Gen: func() string { return "[" + strings.Repeat("1,", MaxTokenCount/2) + "1]" },
		Want: []string{gerr("JSON token count limit exceeded"), notObj, perr("expecting value")}},
	{Name: "stray byte in a long string", Gen: func() string { return `["` + strings.Repeat("A", 1<<20) + "\x01" },
		Want: []string{stray(`\"` + strings.Repeat("A", 1<<20) + `\u0001`)}},
}

// splitRequests are cut at every byte position in the split tests.
var splitRequests = []string{
	ping,
	`{'execute':'guest-ping','id':'it\'s'}`,
	pingID(`{"a":[1,-2.5e3,true,null,"\u00e9\ud83d\ude00"],"b":{}}`),
	pingID("18446744073709551615"),
	"\xff" + pingID("1"),
}

// syncRequest is sent after every case; its reply ends the case.
func syncRequest(n int64) string {
	return fmt.Sprintf(`{"execute":"guest-sync","arguments":{"id":%d}}`, n)
}

func syncReply(n int64) string { return fmt.Sprintf(`{"return": %d}`, n) }
