package protocol

// The lexer is a byte-for-byte replica of QEMU's qobject/json-lexer.c state machine. Replies
// depend on its exact quirks: which byte ends a token, which bytes a bad token swallows (they
// appear in "stray '...'" texts) and where error recovery resynchronises, so the transition
// table is built from the same rules rather than from a JSON grammar of our own.

// Lexer states. lxStart is zero so that a zero Decoder is ready to use; the order does not
// matter otherwise (QEMU's does, for its own table packing).
const (
	lxStart uint8 = iota
	lxRecovery
	lxDQString
	lxDQEscape
	lxSQString
	lxSQEscape
	lxZero
	lxExpDigits
	lxExpSign
	lxExpE
	lxMantissa
	lxMantissaDigits
	lxDigits
	lxSign
	lxKeyword
	numLexStates
)

// Token types, as json-lexer.c hands them to the streamer. They share the transition table's
// value space with the states, above them.
const (
	tokError uint8 = numLexStates + iota
	tokLCurly
	tokRCurly
	tokLSquare
	tokRSquare
	tokColon
	tokComma
	tokInteger
	tokFloat
	tokKeyword
	tokString
	// tokForced is a token the lexer cut off because it grew past maxTokenSize. QEMU passes
	// its lexer state as the token type there; the streamer only ever rejects it for size.
	tokForced
)

// lookahead marks a transition that does not consume the byte: the token ends before it and
// the byte is examined again in the next state.
const lookahead = 0x80

// lexTable[state][byte] is the next state or token type, possibly with lookahead. Entries left
// zero-initialised must mean "error", so the table stores tokError explicitly.
var lexTable [numLexStates][256]uint8

func init() {
	t := &lexTable
	for s := range t {
		for b := range t[s] {
			t[s][b] = tokError
		}
	}
	setRange := func(s uint8, lo, hi int, v uint8) {
		for b := lo; b <= hi; b++ {
			t[s][b] = v
		}
	}
	terminal := func(s, tok uint8) { setRange(s, 0, 0xFF, tok|lookahead) }

	// Recovery skips to a structural character, a control character other than tab, or one
	// of the impossible UTF-8 bytes, and re-reads that byte from the start state.
	setRange(lxRecovery, 0, 0x1F, lxStart|lookahead)
	setRange(lxRecovery, 0x20, 0xFD, lxRecovery)
	setRange(lxRecovery, 0xFE, 0xFF, lxStart|lookahead)
	t[lxRecovery]['\t'] = lxRecovery
	for _, c := range "[]{}:," {
		t[lxRecovery][c] = lxStart | lookahead
	}

	setRange(lxDQEscape, 0x20, 0xFD, lxDQString)
	setRange(lxDQString, 0x20, 0xFD, lxDQString)
	t[lxDQString]['\\'] = lxDQEscape
	t[lxDQString]['"'] = tokString

	setRange(lxSQEscape, 0x20, 0xFD, lxSQString)
	setRange(lxSQString, 0x20, 0xFD, lxSQString)
	t[lxSQString]['\\'] = lxSQEscape
	t[lxSQString]['\''] = tokString

	terminal(lxZero, tokInteger)
	setRange(lxZero, '0', '9', tokError)
	t[lxZero]['.'] = lxMantissa

	terminal(lxExpDigits, tokFloat)
	setRange(lxExpDigits, '0', '9', lxExpDigits)

	setRange(lxExpSign, '0', '9', lxExpDigits)

	t[lxExpE]['-'] = lxExpSign
	t[lxExpE]['+'] = lxExpSign
	setRange(lxExpE, '0', '9', lxExpDigits)

	terminal(lxMantissaDigits, tokFloat)
	setRange(lxMantissaDigits, '0', '9', lxMantissaDigits)
	t[lxMantissaDigits]['e'] = lxExpE
	t[lxMantissaDigits]['E'] = lxExpE

	setRange(lxMantissa, '0', '9', lxMantissaDigits)

	terminal(lxDigits, tokInteger)
	setRange(lxDigits, '0', '9', lxDigits)
	t[lxDigits]['e'] = lxExpE
	t[lxDigits]['E'] = lxExpE
	t[lxDigits]['.'] = lxMantissa

	t[lxSign]['0'] = lxZero
	setRange(lxSign, '1', '9', lxDigits)

	terminal(lxKeyword, tokKeyword)
	setRange(lxKeyword, 'a', 'z', lxKeyword)

	t[lxStart]['"'] = lxDQString
	t[lxStart]['\''] = lxSQString
	t[lxStart]['0'] = lxZero
	setRange(lxStart, '1', '9', lxDigits)
	t[lxStart]['-'] = lxSign
	t[lxStart]['{'] = tokLCurly
	t[lxStart]['}'] = tokRCurly
	t[lxStart]['['] = tokLSquare
	t[lxStart][']'] = tokRSquare
	t[lxStart][','] = tokComma
	t[lxStart][':'] = tokColon
	setRange(lxStart, 'a', 'z', lxKeyword)
	for _, c := range " \t\r\n" {
		t[lxStart][c] = lxStart
	}

	for b := 0; b < 256; b++ {
		plainDQ[b] = t[lxDQString][b] == lxDQString
		plainSQ[b] = t[lxSQString][b] == lxSQString
		plainRecovery[b] = t[lxRecovery][b] == lxRecovery
	}
}

// Bytes that keep a string (or recovery) in the same state, so whole runs of them can be
// taken at once instead of one table step per byte.
var plainDQ, plainSQ, plainRecovery [256]bool
