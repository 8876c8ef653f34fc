// Package qmp is the harness's QEMU Machine Protocol client: go-qemu's SocketMonitor behind a
// tap that records the wire, keeps every event in an ordered log, and keeps error classes.
//
// # Why a tap
//
// go-qemu's SocketMonitor is used as is for the protocol (greeting, qmp_capabilities, one command
// at a time), but three of its properties do not fit a test harness:
//
//   - its Connect has no deadline, and it can only dial an address itself;
//   - its Events channel is unbuffered, and an undrained channel blocks the reader goroutine and
//     with it every command reply;
//   - its Run turns an error reply into errors.New(desc), dropping the class.
//
// So the Monitor dials QEMU itself (with the caller's context), listens on a private abstract
// unix socket for the SocketMonitor to dial, and pumps lines between the two. On the way from
// QEMU, the pump appends events to the log (they are never forwarded: go-qemu has no listener and
// would drop them anyway) and hands each command reply, matched by the "id" the Monitor puts on
// every command, to the caller that waits for it, before go-qemu sees it. Every line in either
// direction goes to the transcript with a timestamp.
//
// # Concurrency
//
// A Monitor is safe for concurrent use. go-qemu serialises commands on the socket; replies are
// matched by id, so a caller whose context expires simply stops waiting and the abandoned
// command's late reply is consumed by the goroutine that still sits in go-qemu's Run. Events are
// appended by the single pump goroutine, so their positions follow the wire order exactly: an
// event that QEMU sent before the reply to a command has a lower position than Mark() taken right
// after that command returned.
//
// A limit inherited from go-qemu: its reader is a bufio.Scanner with the default 64 KiB line
// limit, so a reply longer than that (query-qmp-schema) ends the connection.
package qmp
