// Package transport opens the agent's channel to the host: a virtio-serial port, a serial
// line, or a listening unix or vsock socket (also one passed by systemd socket activation).
// All of them are non-blocking file descriptors driven by poll(2), so a blocked read or write
// can be interrupted by a context and a reply of any size is written completely.
package transport

import (
	"context"
	"errors"
	"fmt"
)

// Methods of the -m option.
const (
	VirtioSerial = "virtio-serial"
	ISASerial    = "isa-serial"
	UnixListen   = "unix-listen"
	VsockListen  = "vsock-listen"
)

// ErrPeerGone means the host went away while a reply was being written; the rest of the
// reply is dropped, as nobody can read it.
var ErrPeerGone = errors.New("peer disconnected")

// Stream is one connection to the host.
type Stream interface {
	// Read blocks until it has read at least one byte, ctx is done, or the stream failed.
	// It returns io.EOF when a socket client closed its end. Device streams never return
	// io.EOF: a disconnected host is waited for, because the device stays open.
	Read(ctx context.Context, p []byte) (int, error)
	// WriteAll writes all of p, waiting for room as long as needed. It returns ErrPeerGone
	// (wrapped) when a socket client disconnected first; a device stream waits for the next
	// host instead, until ctx is done.
	WriteAll(ctx context.Context, p []byte) error
	Close() error
}

// Channel yields the streams to serve, one at a time.
type Channel interface {
	// Accept waits for the next stream: the next client of a listening socket, or the
	// device itself.
	Accept(ctx context.Context) (Stream, error)
	// PerClient reports whether every stream is a new client, whose input starts afresh.
	// It is false for devices: a host that reconnects continues the same byte stream.
	PerClient() bool
	Close() error
}

// Options tune Open.
type Options struct {
	// Debugf receives the reference's debug messages ("received EOF"); nil drops them.
	Debugf func(format string, a ...any)
}

func (o Options) debugf(format string, a ...any) {
	if o.Debugf != nil {
		o.Debugf(format, a...)
	}
}

// Open opens the channel of method at path. The errors carry the reference's texts
// ("error opening channel '%s': %s", "Failed to bind socket to %s: %s").
func Open(method, path string, opts Options) (Channel, error) {
	switch method {
	case VirtioSerial:
		return openVirtio(path, opts)
	case ISASerial:
		return openSerial(path, opts)
	case UnixListen:
		return listenUnix(path, opts)
	case VsockListen:
		return listenVsock(path, opts)
	}
	return nil, fmt.Errorf("unsupported channel method/type: %s", method)
}
