package protocol

import (
	"encoding/binary"
	"strconv"
)

// QEMU's json-parser.c is a recursive-descent parser that runs over a message's whole token
// list once the streamer decides the message is complete. This parser takes the tokens one at
// a time instead, building the value as they arrive, and keeps only the first error, which is
// the one QEMU's left-to-right descent would report. The decoder holds that error back until
// the streamer's message boundary, where QEMU would have run its parser.

// Parser states: what the next token may be.
const (
	psValue    uint8 = iota // a value: at top level, after ',' in a list, after ':' in a dict
	psArrFirst              // a value or ']', right after '['
	psArrNext               // ',' or ']' after a list element
	psKeyFirst              // a key or '}', right after '{'
	psKey                   // a key, after ',' in a dict
	psColon                 // ':' after a key
	psObjNext               // ',' or '}' after a member's value
	psDone                  // the top-level value is complete
)

// frame is one open list or dict.
type frame struct {
	arr   []any
	obj   map[string]any
	isObj bool
	key   string // the member whose value comes next
	state uint8
}

// parser is the incremental parser of one message.
type parser struct {
	stack  []frame
	root   uint8 // state at top level (when stack is empty)
	value  any   // the complete top-level value
	failed bool
	err    string // the first error, when failed
}

// maxParseMessage is the buffer vsnprintf() fills in json-parser.c parse_error(): longer
// messages (a huge invalid keyword) are cut to 1023 bytes.
const maxParseMessage = 1023

func (p *parser) reset() {
	for i := range p.stack {
		p.stack[i] = frame{}
	}
	p.stack = p.stack[:0]
	p.root = psValue
	p.value = nil
	p.failed = false
	p.err = ""
}

// state is where the parser is now.
func (p *parser) state() uint8 {
	if n := len(p.stack); n > 0 {
		return p.stack[n-1].state
	}
	return p.root
}

func (p *parser) setState(s uint8) {
	if n := len(p.stack); n > 0 {
		p.stack[n-1].state = s
	} else {
		p.root = s
	}
}

// active reports whether the parser still takes tokens.
func (p *parser) active() bool { return !p.failed && p.root != psDone }

// fail records the first parse error and drops the partial value, which can no longer be used.
func (p *parser) fail(msg string) {
	if p.failed {
		return
	}
	if len(msg) > maxParseMessage {
		msg = msg[:maxParseMessage]
	}
	p.failed = true
	p.err = "JSON parse error, " + msg
	for i := range p.stack {
		p.stack[i] = frame{}
	}
	p.stack = p.stack[:0]
}

// wantsValue reports whether the next token is parsed as a value (parse_value() is called).
func (p *parser) wantsValue() bool {
	switch p.state() {
	case psValue, psArrFirst, psKeyFirst, psKey:
		return true
	}
	return false
}

// misplaced is the error for a value or structural token where the state allows neither.
func (p *parser) misplaced() {
	switch p.state() {
	case psArrNext:
		p.fail("expected separator in list")
	case psObjNext:
		p.fail("expected separator in dict")
	case psColon:
		p.fail("missing : in object pair")
	default:
		p.fail("expecting value")
	}
}

// structural takes one of { } [ ] , : .
func (p *parser) structural(tok uint8) {
	switch st := p.state(); st {
	case psValue, psArrFirst, psKeyFirst, psKey:
		switch {
		case tok == tokLCurly:
			p.stack = append(p.stack, frame{isObj: true, state: psKeyFirst})
		case tok == tokLSquare:
			p.stack = append(p.stack, frame{state: psArrFirst})
		case tok == tokRSquare && st == psArrFirst:
			p.closeTop()
		case tok == tokRCurly && st == psKeyFirst:
			p.closeTop()
		default:
			p.fail("expecting value")
		}
	case psArrNext:
		switch tok {
		case tokComma:
			p.setState(psValue)
		case tokRSquare:
			p.closeTop()
		default:
			p.misplaced()
		}
	case psObjNext:
		switch tok {
		case tokComma:
			p.setState(psKey)
		case tokRCurly:
			p.closeTop()
		default:
			p.misplaced()
		}
	case psColon:
		if tok == tokColon {
			p.setState(psValue)
		} else {
			p.misplaced()
		}
	}
}

// closeTop pops the innermost container and completes it as a value of its parent.
func (p *parser) closeTop() {
	n := len(p.stack)
	f := p.stack[n-1]
	p.stack[n-1] = frame{}
	p.stack = p.stack[:n-1]
	if f.isObj {
		if f.obj == nil {
			f.obj = map[string]any{}
		}
		p.complete(f.obj)
		return
	}
	if f.arr == nil {
		f.arr = []any{}
	}
	p.complete(f.arr)
}

// complete places a finished value where the parser expected one.
func (p *parser) complete(v any) {
	n := len(p.stack)
	if n == 0 {
		p.value = v
		p.root = psDone
		return
	}
	f := &p.stack[n-1]
	switch {
	case !f.isObj:
		f.arr = append(f.arr, v)
		f.state = psArrNext
	case f.state == psValue:
		if f.obj == nil {
			f.obj = map[string]any{}
		} else if _, dup := f.obj[f.key]; dup {
			p.fail("duplicate key")
			return
		}
		f.obj[f.key] = v
		f.key = ""
		f.state = psObjNext
	default:
		// A key: json-parser.c parses any value there and only then checks its type.
		k, ok := v.(string)
		if !ok {
			p.fail("key is not a string in object")
			return
		}
		f.key = k
		f.state = psColon
	}
}

// keyword is parse_keyword().
func keyword(tok []byte) (any, string) {
	switch string(tok) {
	case "true":
		return true, ""
	case "false":
		return false, ""
	case "null":
		return nil, ""
	}
	if len(tok) > maxParseMessage {
		tok = tok[:maxParseMessage] // the message is cut there anyway
	}
	return nil, "invalid keyword '" + string(tok) + "'"
}

// number converts a JSON_INTEGER or JSON_FLOAT token as parse_literal() does: int64 if it
// fits, else uint64 if it is not negative and fits, else float64 (strtod, which saturates to
// ±Inf and flushes tiny values to zero like strconv).
func number(tok []byte, isInt bool) any {
	if isInt {
		neg := tok[0] == '-'
		digits := tok
		if neg {
			digits = tok[1:]
		}
		// Up to 18 digits cannot overflow int64: no need for strconv (and its allocation).
		if len(digits) <= 18 {
			var u int64
			for _, c := range digits {
				u = u*10 + int64(c-'0')
			}
			if neg {
				u = -u
			}
			return u
		}
		s := string(tok)
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i
		}
		if !neg {
			if u, err := strconv.ParseUint(s, 10, 64); err == nil {
				return u
			}
		}
	}
	// The lexer only lets through numbers strconv accepts. Out-of-range values come back with
	// an error and the same saturated value strtod() gives, so the error carries nothing.
	f, _ := strconv.ParseFloat(string(tok), 64)
	return f
}

// decodeString decodes a string token (quotes included) in place, as parse_string() does:
// the decoded bytes end up in tok[1:1+n]. On failure it returns parse_string()'s message.
// Decoding never writes past what it has read, so one buffer is enough.
func decodeString(tok []byte) (n int, msg string) {
	end := len(tok) - 1 // the closing quote
	r := 1
	// Most strings are plain ASCII without escapes: they stay where they are.
	for r+8 <= end {
		x := binary.LittleEndian.Uint64(tok[r:])
		if x&0x8080808080808080|hasZero(x^'\\'*0x0101010101010101) != 0 {
			break
		}
		r += 8
	}
	for r < end {
		c := tok[r]
		if c == '\\' || c >= 0x80 {
			break
		}
		r++
	}
	w := r
	for r < end {
		c := tok[r]
		switch {
		case c == '\\':
			beg := r
			r++
			e := tok[r]
			r++
			switch e {
			case '"', '\'', '\\', '/':
				tok[w] = e
				w++
			case 'b':
				tok[w] = '\b'
				w++
			case 'f':
				tok[w] = '\f'
				w++
			case 'n':
				tok[w] = '\n'
				w++
			case 'r':
				tok[w] = '\r'
				w++
			case 't':
				tok[w] = '\t'
				w++
			case 'u':
				cp := hex4(tok[r:])
				r += 4
				if cp >= 0xD800 && cp <= 0xDBFF && r+1 < len(tok) && tok[r] == '\\' && tok[r+1] == 'u' {
					cp = 0x10000 + (cp&0x3FF)<<10
					if trail := hex4(tok[r+2:]); trail >= 0xDC00 && trail <= 0xDFFF {
						cp |= trail & 0x3FF
						r += 6
					} else {
						cp = -1
					}
				}
				if !validCodepoint(cp) {
					// "%.*s" over the escape as far as the parser got, stopping at the end of
					// the token like the C string does.
					return 0, string(tok[beg:min(r, len(tok))]) + " is not a valid Unicode character"
				}
				w = len(appendModUTF8(tok[:w], cp))
			default:
				return 0, "invalid escape sequence in string"
			}
		case c < 0x80:
			tok[w] = c
			w++
			r++
		default:
			cp, size := modUTF8(tok[r:end])
			if cp < 0 {
				return 0, "invalid UTF-8 sequence in string"
			}
			// A valid sequence re-encodes to the same bytes (C0 80 included).
			copy(tok[w:], tok[r:r+size])
			w += size
			r += size
		}
	}
	return w - 1, ""
}

// hex4 is cvt4hex(): the value of four hex digits, or -1. It stops at the first non-digit, so
// it never looks past the closing quote.
func hex4(s []byte) int32 {
	var cp int32
	for i := 0; i < 4; i++ {
		if i >= len(s) {
			return -1
		}
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			cp = cp<<4 | int32(c-'0')
		case c >= 'a' && c <= 'f':
			cp = cp<<4 | int32(c-'a'+10)
		case c >= 'A' && c <= 'F':
			cp = cp<<4 | int32(c-'A'+10)
		default:
			return -1
		}
	}
	return cp
}
