package qga

import "github.com/qgakit/qgakit/harness/transcript"

// Directions of transcript entries.
const (
	DirSend    = transcript.DirSend // bytes the harness sent
	DirRecv    = transcript.DirRecv // a reply line from the agent (a leading 0xFF shows as \xff)
	DirDiscard = "xx"               // bytes skipped while looking for a sync delimiter
	DirNote    = transcript.DirNote // something the harness notes (connect, timeouts, resync)
)

// Transcript is the record of an agent conversation: harness/transcript's type, which writes
// the same artifact format as harness/qmp's. The alias keeps qga.Transcript working.
type Transcript = transcript.Transcript

// Entry is one line of a transcript.
type Entry = transcript.Entry
