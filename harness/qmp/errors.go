package qmp

import "errors"

// Error is an error reply from QEMU: {"error": {"class": Class, "desc": Desc}}.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp error " + e.Class + ": " + e.Desc }

// ErrClosed is returned once the connection to QEMU has ended (QEMU exited or Close was
// called) and no reply or event can come any more.
var ErrClosed = errors.New("qmp: connection closed")
