package protocol

// QEMU keeps strings in "modified UTF-8" (U+0000 is the overlong pair C0 80) and its decoder,
// util/unicode.c mod_utf8_codepoint(), is stricter than Go's in places that show on the wire:
// it rejects noncharacters (U+FDD0..U+FDEF and every U+xFFFE/U+xFFFF), accepts C0 80, and
// decides how many bytes an invalid sequence covers (each such run is one U+FFFD in replies).

// minCodepoint is the smallest code point that needs a sequence of length index+2.
var minCodepoint = [5]int32{0x80, 0x800, 0x10000, 0x200000, 0x4000000}

// modUTF8 decodes the sequence at the start of s like mod_utf8_codepoint(s, 6, &end): it
// returns the code point, or -1 for an invalid sequence, and how many bytes the sequence
// covers. The end of s reads as a zero byte, as the C string's terminator does. s must not be
// empty.
func modUTF8[T string | []byte](s T) (cp int32, size int) {
	b := s[0]
	switch {
	case b < 0x80:
		return int32(b), 1
	case b >= 0xFE, b&0x40 == 0:
		// Impossible bytes and stray continuation bytes.
		return -1, 1
	}
	n := 0
	mask := byte(0x80)
	for ; b&mask != 0; mask >>= 1 {
		n++
	}
	cp = int32(b & (mask - 1))
	for i := 1; i < n; i++ {
		var c byte
		if i < len(s) {
			c = s[i]
		}
		if c&0xC0 != 0x80 {
			return -1, i
		}
		cp = cp<<6 | int32(c&0x3F)
	}
	if !validCodepoint(cp) || (cp < minCodepoint[n-2] && !(cp == 0 && n == 2)) {
		return -1, n
	}
	return cp, n
}

// validCodepoint is util/unicode.c is_valid_codepoint(): in range, not a surrogate, not a
// noncharacter.
func validCodepoint(cp int32) bool {
	switch {
	case cp < 0 || cp > 0x10FFFF:
		return false
	case cp&^0x7FF == 0xD800:
		return false
	case cp&0xFFFE == 0xFFFE:
		return false
	case cp >= 0xFDD0 && cp <= 0xFDEF:
		return false
	}
	return true
}

// appendModUTF8 appends cp in modified UTF-8 (mod_utf8_encode); cp must be valid.
func appendModUTF8(dst []byte, cp int32) []byte {
	switch {
	case cp > 0 && cp <= 0x7F:
		return append(dst, byte(cp))
	case cp <= 0x7FF:
		return append(dst, 0xC0|byte(cp>>6)&0x1F, 0x80|byte(cp)&0x3F)
	case cp <= 0xFFFF:
		return append(dst, 0xE0|byte(cp>>12)&0x0F, 0x80|byte(cp>>6)&0x3F, 0x80|byte(cp)&0x3F)
	}
	return append(dst, 0xF0|byte(cp>>18)&0x07, 0x80|byte(cp>>12)&0x3F, 0x80|byte(cp>>6)&0x3F,
		0x80|byte(cp)&0x3F)
}
