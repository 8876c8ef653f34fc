// Package server is the agent's main loop: it reads what the host sends, feeds the stream
// decoder, runs each request to completion in order (like the reference, a slow command holds
// up everything behind it and nothing more is read meanwhile) and writes each reply whole
// before it reads on.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/agent/transport"
)

// Dispatcher answers one decoded message; *dispatch.Dispatcher is one.
type Dispatcher interface {
	Dispatch(ctx context.Context, m protocol.Message) (resp protocol.Response, reply bool)
}

// readSize is the reference's QGA_READ_COUNT_DEFAULT.
const readSize = 4096

// releaseAfter is the size of a request or reply after which the agent hands the memory it
// took back to the kernel at once (see release).
const releaseAfter = 4 << 20

// shutdownGrace is how long a reply that is being written when the agent is told to stop
// may still take: the command already ran, so its reply should reach the host, but a host
// that does not read must not keep the agent from exiting.
const shutdownGrace = 2 * time.Second

// Server serves one channel.
type Server struct {
	Channel    transport.Channel
	Dispatcher Dispatcher
	Log        *Logger // nil logs nothing
	// AfterMessage, when set, runs after every message has been answered.
	AfterMessage func()

	dec *protocol.Decoder
	// received counts the bytes read since the last message was answered: about the size of
	// the next message.
	received int
}

// Serve answers requests until ctx is done (it then returns nil) or the channel fails. The
// decoder's state survives across calls for a device channel, as the reference's parser
// survives a reopened channel.
func (s *Server) Serve(ctx context.Context) error {
	if s.dec == nil {
		s.dec = protocol.NewDecoder()
	}
	writeCtx, stopWrites := graceContext(ctx, shutdownGrace)
	defer stopWrites()
	buf := make([]byte, readSize)
	for {
		st, err := s.Channel.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept client: %w", err)
		}
		if s.Channel.PerClient() {
			s.dec.Reset()
		}
		err = s.serveStream(ctx, writeCtx, st, buf)
		if s.Channel.PerClient() {
			st.Close()
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, io.EOF):
			s.Log.Debugf("received EOF")
		case s.Channel.PerClient():
			// One client's broken connection is no reason to stop serving the next; the
			// reference exits here, which a client that hangs up mid-reply can trigger.
			s.Log.Warningf("error reading channel: %v", err)
		default:
			s.Log.Warningf("error reading channel: %v", err)
			return err
		}
	}
}

// serveStream reads and answers until the stream fails. It only returns when a read does, so
// its error is never nil: io.EOF for a client that hung up, or why the channel broke.
func (s *Server) serveStream(ctx, writeCtx context.Context, st transport.Stream, buf []byte) error {
	emit := func(m protocol.Message) {
		if ctx.Err() != nil {
			return
		}
		s.handle(ctx, writeCtx, st, m)
	}
	for {
		n, err := st.Read(ctx, buf)
		if err != nil {
			return err
		}
		s.received += n
		if s.Log.On(LevelDebug) {
			s.Log.Debugf("read data, count: %d, data: %s", n, cString(buf[:n]))
		}
		s.dec.Feed(buf[:n], emit)
	}
}

// handle runs one message and sends its reply. The command runs to completion even if the
// agent is told to stop meanwhile, as in the reference, whose signal handler only ends the
// main loop.
func (s *Server) handle(ctx, writeCtx context.Context, st transport.Stream, m protocol.Message) {
	s.Log.Debugf("process_event: called")
	if m.Err == nil {
		s.Log.Debugf("processing command")
	}
	if s.respond(ctx, writeCtx, st, m) >= releaseAfter || s.received >= releaseAfter {
		release()
	}
	s.received = 0
	if s.AfterMessage != nil {
		s.AfterMessage()
	}
}

// respond runs m and writes its reply, if it has one, as it is encoded: a guest-file-read's
// base64 goes to the channel in pieces and never exists whole. A reply value that is a
// protocol.Releaser (a large read's mapped buffer) is released once it is written. It returns
// the reply's size (0 without a reply).
func (s *Server) respond(ctx, writeCtx context.Context, st transport.Stream, m protocol.Message) int64 {
	resp, reply := s.Dispatcher.Dispatch(context.WithoutCancel(ctx), m)
	if !reply {
		return 0
	}
	// It takes no encoding to know the size: Base64 values are counted, not encoded.
	size := protocol.ResponseSize(&resp)
	// The reference logs the size before it writes.
	s.Log.Debugf("sending data, count: %d", size)
	if _, err := protocol.WriteResponse(streamWriter{writeCtx, st}, &resp); err != nil {
		s.Log.Warningf("error sending error response: %v", err)
	}
	if r, ok := resp.Return.(protocol.Releaser); ok {
		r.Release()
	}
	return size
}

// release returns the memory of a large message to the kernel now. A large request (a 48 MiB
// guest-file-write is 64 MiB of JSON) leaves its tokens and decoded bytes as garbage, and even
// a large read, whose buffer is not on the heap, leaves a few hundred KiB of it from writing
// the reply; Go's collector would free them at its next cycle, which an idle agent may not
// reach for hours, and hand the pages back over minutes. So an agent that idles after a file
// copy (the usual case) would stay that large. The cost, a collection of a heap of a few
// hundred KiB and a madvise, is small beside the message's own, and small messages never pay
// it.
func release() { debug.FreeOSMemory() }

// streamWriter is a stream as an io.Writer for protocol.WriteResponse.
type streamWriter struct {
	ctx context.Context
	st  transport.Stream
}

func (w streamWriter) Write(p []byte) (int, error) {
	if err := w.st.WriteAll(w.ctx, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// graceContext returns a context that ends grace after parent does, and a function that
// ends it at once and releases its resources.
func graceContext(parent context.Context, grace time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-ctx.Done():
		}
	})
	return ctx, func() {
		stop()
		cancel()
	}
}

// cString is the data as the reference's debug line shows it: up to the first NUL.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
