// Package protocol is the qemu-ga wire format: a stream decoder that turns the bytes a host
// sends into JSON values (with the reference's lexer extensions, limits and error replies), and
// an encoder that writes replies exactly as qemu-ga 7.2 frames them.
//
// Decoded values use these Go types: nil, bool, string, int64 (integers that fit),
// uint64 (integers above math.MaxInt64 that fit 64 bits), float64 (everything else numeric),
// []any for arrays and map[string]any for objects.
//
// Strings hold what the reference holds: valid modified UTF-8, where U+0000 (sent as the
// escape \u0000 or as the raw pair) is the bytes C0 80, never a NUL byte. A path or text given with
// \u0000 therefore reaches the system with those two bytes, as it does with qemu-ga, and the
// encoder writes C0 80 back as \u0000.
//
// Replies are byte-identical to the reference's, including the order of object members: a
// QDict prints its members in hash-bucket order (see qdict.go), which AppendValue reproduces
// for maps and struct fields. Struct fields should be declared in the QAPI schema's member
// order, which decides the rare ties.
package protocol

import "fmt"

// Error classes of the reference agent. qemu-ga uses no others.
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
)

// Error is an error reply: {"error": {"class": Class, "desc": Desc}}.
type Error struct {
	Class string
	Desc  string
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Errorf builds a GenericError, the class of everything but unknown or disabled commands.
func Errorf(format string, a ...any) *Error {
	return &Error{Class: ClassGenericError, Desc: fmt.Sprintf(format, a...)}
}

// Message is one complete top-level item of the input stream: a decoded value, or a parse
// error that must be answered with an error reply (and never with an id).
type Message struct {
	Value any
	Err   *Error
}

// Response is one reply to send.
type Response struct {
	Return any    // the value of "return"; nil means an empty object
	Err    *Error // when set, the reply is an error and Return is ignored
	ID     any    // the request's "id", echoed when HasID is set
	HasID  bool
	// Delimited prefixes the reply with the 0xFF sentinel (guest-sync-delimited).
	Delimited bool
}
