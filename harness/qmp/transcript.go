package qmp

import "github.com/qgakit/qgakit/harness/transcript"

// Directions of transcript entries.
const (
	DirSend  = transcript.DirSend // a command the harness sent
	DirRecv  = transcript.DirRecv // a reply or greeting from QEMU
	DirEvent = "ev"               // an asynchronous event
	DirNote  = transcript.DirNote // something the harness notes (connect, close, errors)
)

// Transcript is the record of a QMP conversation: harness/transcript's type, which writes the
// same artifact format as harness/qga's. The alias keeps qmp.Transcript working.
type Transcript = transcript.Transcript

// Entry is one line of a transcript.
type Entry = transcript.Entry
