package protocol

import (
	"encoding/binary"
	"unsafe"
)

// Limits of QEMU's qobject/json-streamer.c, with the same meaning: errors name them as
// "JSON token size limit exceeded", "JSON token count limit exceeded" and "JSON nesting depth
// limit exceeded".
const (
	// MaxTokenSize bounds the total length of a message's tokens (and of any single token:
	// the lexer cuts a longer one off).
	MaxTokenSize = 64 << 20
	// MaxTokenCount bounds the number of tokens in a message.
	MaxTokenCount = 2 << 20
	// MaxNesting bounds how deep lists and dicts may nest.
	MaxNesting = 1 << 10
)

// handOffMin is the size from which a decoded string keeps the token buffer it was decoded in
// instead of being copied out of it: a 64 MiB guest-file-write payload then exists once.
const handOffMin = 4 << 10

// bigToken is the token buffer size from which the buffer grows straight to the largest token
// the lexer accepts instead of doubling: a doubling from 32 to 64 MiB holds both buffers, the
// 96 MiB of which made a 64 MiB string cost well over 100 MB of resident memory. Pages of the
// 64 MiB buffer that the token never reaches are never touched, so a shorter token does not
// pay for them in resident memory.
const bigToken = 4 << 20

// keepTokenBuffer is the largest token buffer kept for reuse between tokens, so a huge token
// does not pin its memory after the message is gone.
const keepTokenBuffer = 1 << 20

// Decoder turns a byte stream into Messages. It is push-based so that transports can feed it
// whatever a read returned, and it keeps partial input across calls (and across host
// reconnects on virtio-serial, as the reference does).
//
// It reproduces qemu-ga 7.2's JSON input layer: json-lexer.c (with its single-quoted strings,
// error tokens and recovery), json-streamer.c (message boundaries by brace and bracket count,
// and the limits) and json-parser.c (values and error texts), including how many errors a
// bad input draws and when. It differs in one place: after a nesting-limit error the
// reference keeps counting the brackets that follow, so an unbalanced rest of the rejected
// input swallows the requests after it; this decoder drops a message still open at the end
// of the line that had the error instead, so the next line's request is answered.
//
// Memory stays within one message: the values of the message being read (released as soon as
// the message cannot fit any more) plus the token being read, whose text MaxTokenSize bounds.
// Go values of tiny members cost more than their text: the worst case, 2 Mi tokens of
// one-member dicts, holds about 115 MiB (the reference needs gigabytes for it). Parsing is
// linear in the input.
//
// The zero Decoder is ready to use. A Decoder is not safe for concurrent use.
type Decoder struct {
	state uint8  // lexer state
	tok   []byte // text of the token being read

	// Streamer state for the message being read.
	brace, bracket int
	count          int // tokens
	size           int // bytes of token text

	// afterNesting is set by a nesting-limit error until the end of its line.
	afterNesting bool

	p    parser
	emit func(Message)
}

// NewDecoder returns a decoder in its initial state.
func NewDecoder() *Decoder { return &Decoder{} }

// Feed consumes p and calls emit (not nil) once for each complete message, in input order.
// emit must not call back into the decoder. The decoder keeps no reference to p, and emitted
// values share no memory with the decoder.
func (d *Decoder) Feed(p []byte, emit func(Message)) {
	d.emit = emit
	defer func() { d.emit = nil }()
	for i := 0; i < len(p); {
		c := p[i]
		switch d.state {
		case lxStart:
			if c == ' ' {
				i++
				continue
			}
		case lxDQString, lxSQString:
			// Stop where the token would outgrow its limit, the byte at which json-lexer.c
			// cuts it off.
			limit := min(len(p), i+MaxTokenSize+1-len(d.tok))
			var j int
			if d.state == lxDQString {
				j = plainRun(p, i, limit, '"', &plainDQ)
			} else {
				j = plainRun(p, i, limit, '\'', &plainSQ)
			}
			if j > i {
				d.appendToken(p[i:j])
				i = j
				d.checkTokenSize()
				continue
			}
		case lxRecovery:
			j := i
			for j < len(p) && plainRecovery[p[j]] {
				j++
			}
			if j > i {
				i = j
				continue
			}
		}

		next := lexTable[d.state][c]
		consumed := next&lookahead == 0
		if consumed {
			d.tok = append(d.tok, c)
			i++
		}
		next &^= lookahead
		switch {
		case next == tokError:
			d.token(tokError)
			d.endToken(lxRecovery)
		case next > tokError:
			d.token(next)
			d.endToken(lxStart)
		case next == lxStart:
			if consumed && c == '\n' && d.afterNesting {
				d.lineEnd()
			}
			d.endToken(lxStart)
		case next == lxRecovery:
			d.endToken(lxRecovery)
		default:
			d.state = next
			d.checkTokenSize()
		}
	}
}

// Reset discards any partial input, as for a new unix-listen client. Note that the reference
// does not do this: qemu-ga 7.2 keeps its parser state across unix-listen clients (see
// TestReferenceKeepsStateAcrossClients), so a transport that matches it does not call Reset.
func (d *Decoder) Reset() {
	d.state = lxStart
	d.tok = nil
	d.afterNesting = false
	d.resetMessage()
}

// appendToken adds b to the token being read. Long tokens grow by doubling, up to the size
// at which the lexer cuts them off: a 64 MiB string arriving 4 KiB at a time is copied about
// twice rather than the five times append's gentler growth would cost.
func (d *Decoder) appendToken(b []byte) {
	if need := len(d.tok) + len(b); need > cap(d.tok) && cap(d.tok) >= 64<<10 {
		c := max(2*cap(d.tok), need)
		if c > bigToken {
			c = MaxTokenSize + 1 // also the bound: bigToken is below it
		}
		grown := make([]byte, len(d.tok), c)
		copy(grown, d.tok)
		d.tok = grown
	}
	d.tok = append(d.tok, b...)
}

// plainRun returns the end of the run of string bytes from p[i] (before limit) that leave a
// string as it is: 0x20..0xFD but the quote and the backslash. It looks at eight bytes at a
// time.
func plainRun(p []byte, i, limit int, quote byte, plain *[256]bool) int {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	q := uint64(quote) * ones
	for i+8 <= limit {
		x := binary.LittleEndian.Uint64(p[i:])
		bad := (x-0x20*ones)&^x&high | // below 0x20
			hasZero(x^q) | hasZero(x^'\\'*ones) |
			hasZero((x&(0xFE*ones))^(0xFE*ones)) // 0xFE or 0xFF
		if bad != 0 {
			break
		}
		i += 8
	}
	for i < limit && plain[p[i]] {
		i++
	}
	return i
}

// hasZero is non-zero when some byte of v is zero.
func hasZero(v uint64) uint64 {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	return (v - ones) & ^v & high
}

// endToken starts the next token in state s.
func (d *Decoder) endToken(s uint8) {
	if cap(d.tok) > keepTokenBuffer {
		d.tok = nil
	} else {
		d.tok = d.tok[:0]
	}
	d.state = s
}

// checkTokenSize applies json-lexer.c's cut-off for a token that grows past MaxTokenSize, and
// frees the message's values as soon as the token being read makes the message too big to
// succeed.
func (d *Decoder) checkTokenSize() {
	if len(d.tok) > MaxTokenSize {
		d.token(tokForced)
		d.endToken(lxStart)
		return
	}
	if d.size+len(d.tok)+1 > MaxTokenSize && d.count > 0 && !d.p.failed {
		// Whatever comes, this message ends in an error; its values only cost memory now.
		d.p.fail("")
	}
}

// lineEnd ends a line that had a nesting-limit error: a message still open there began in the
// rest of the rejected input, not as a request, and is dropped without a reply.
func (d *Decoder) lineEnd() {
	d.afterNesting = false
	if d.count > 0 {
		d.resetMessage()
	}
}

// token is json_message_process_token(): it counts, applies the limits, feeds the parser and
// emits at the message boundary.
func (d *Decoder) token(typ uint8) {
	switch typ {
	case tokLCurly:
		d.brace++
	case tokRCurly:
		d.brace--
	case tokLSquare:
		d.bracket++
	case tokRSquare:
		d.bracket--
	case tokError:
		d.reject("JSON parse error, stray '" + cString(d.tok) + "'")
		return
	}
	if d.size+len(d.tok)+1 > MaxTokenSize {
		d.reject("JSON token size limit exceeded")
		return
	}
	if d.count+1 > MaxTokenCount {
		d.reject("JSON token count limit exceeded")
		return
	}
	if d.brace+d.bracket > MaxNesting {
		d.reject("JSON nesting depth limit exceeded")
		d.afterNesting = true
		return
	}
	d.count++
	d.size += len(d.tok)
	if d.p.active() {
		d.parse(typ)
	}
	if (d.brace > 0 || d.bracket > 0) && d.brace >= 0 && d.bracket >= 0 {
		return
	}
	var m Message
	switch {
	case d.p.failed:
		m.Err = &Error{Class: ClassGenericError, Desc: d.p.err}
	case d.p.root == psDone:
		m.Value = d.p.value
	default:
		m.Err = &Error{Class: ClassGenericError, Desc: "JSON parse error, premature EOI"}
	}
	d.resetMessage()
	d.emit(m)
}

// parse hands one counted token to the parser.
func (d *Decoder) parse(typ uint8) {
	p := &d.p
	switch typ {
	case tokLCurly, tokRCurly, tokLSquare, tokRSquare, tokComma, tokColon:
		p.structural(typ)
		return
	}
	if !p.wantsValue() {
		p.misplaced()
		return
	}
	switch typ {
	case tokInteger:
		p.complete(number(d.tok, true))
	case tokFloat:
		p.complete(number(d.tok, false))
	case tokKeyword:
		v, msg := keyword(d.tok)
		if msg != "" {
			p.fail(msg)
			return
		}
		p.complete(v)
	case tokString:
		n, msg := decodeString(d.tok)
		if msg != "" {
			p.fail(msg)
			return
		}
		p.complete(d.takeString(n))
	}
}

// takeString returns the string decoded into d.tok[1:1+n].
func (d *Decoder) takeString(n int) string {
	b := d.tok[1 : 1+n]
	if n >= handOffMin {
		// The buffer becomes the string's: it is never written again.
		d.tok = nil
		return unsafe.String(&b[0], n)
	}
	switch string(b) {
	// Every request has some of these; sharing them saves an allocation each.
	case "execute":
		return "execute"
	case "arguments":
		return "arguments"
	case "id":
		return "id"
	}
	return string(b)
}

// reject emits an error for the message being read and discards it.
func (d *Decoder) reject(desc string) {
	d.resetMessage()
	d.emit(Message{Err: &Error{Class: ClassGenericError, Desc: desc}})
}

func (d *Decoder) resetMessage() {
	d.brace, d.bracket, d.count, d.size = 0, 0, 0, 0
	d.p.reset()
}

// cString is what printf("%s") shows of b: the bytes before the first NUL.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
