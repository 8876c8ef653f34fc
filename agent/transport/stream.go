package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// hostPollInterval is how long a device stream waits before looking again while the host
// side is disconnected; the reference sleeps 100 ms too, so a disconnected port costs about
// ten wake-ups a second and no busy loop.
const hostPollInterval = 100 * time.Millisecond

// fdStream is a non-blocking file descriptor.
type fdStream struct {
	fd     int
	w      *waker
	device bool // EOF and hang-up mean "host not connected": wait, keep the fd
	opts   Options
	once   sync.Once
}

func newFDStream(fd int, device bool, opts Options) (*fdStream, error) {
	w, err := newWaker()
	if err != nil {
		return nil, err
	}
	return &fdStream{fd: fd, w: w, device: device, opts: opts}, nil
}

func (s *fdStream) Read(ctx context.Context, p []byte) (int, error) {
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, err := unix.Read(s.fd, p)
		switch {
		case n > 0:
			return n, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			rev, err := s.w.wait(ctx, s.fd, unix.POLLIN)
			if err != nil {
				return 0, err
			}
			// A device that hangs up without data would otherwise make poll return at
			// once, forever.
			if s.device && rev&unix.POLLHUP != 0 && rev&unix.POLLIN == 0 {
				if err := sleep(ctx, hostPollInterval); err != nil {
					return 0, err
				}
			}
		case errors.Is(err, unix.ECONNRESET) && !s.device:
			// A client that closed with replies unread: it is gone, like at EOF.
			return 0, io.EOF
		case err != nil:
			return 0, fmt.Errorf("read channel: %w", err)
		case !s.device:
			return 0, io.EOF
		default:
			s.opts.debugf("received EOF")
			if err := sleep(ctx, hostPollInterval); err != nil {
				return 0, err
			}
		}
	}
}

func (s *fdStream) WriteAll(ctx context.Context, p []byte) error {
	for len(p) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := unix.Write(s.fd, p)
		if n > 0 {
			p = p[n:]
			continue
		}
		switch {
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			rev, err := s.w.wait(ctx, s.fd, unix.POLLOUT)
			if err != nil {
				return err
			}
			switch {
			case rev&unix.POLLOUT != 0:
			case s.device && rev&unix.POLLERR == 0 && rev&unix.POLLHUP != 0:
				// No host on the port: wait for one, as the reference does, and give it the
				// rest of the reply (its sync skips that). Dropping the reply would lose it
				// for a host that is already back: the guest kernel learns of a reconnect
				// by a control message that can come after the new host's first request, so
				// the port may still say "hung up" when the reply to that request is written.
				if err := sleep(ctx, hostPollInterval); err != nil {
					return err
				}
			case rev&(unix.POLLHUP|unix.POLLERR) != 0:
				return fmt.Errorf("write channel: %w", ErrPeerGone)
			}
		case errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
			return fmt.Errorf("write channel: %w: %w", ErrPeerGone, err)
		case err != nil:
			return fmt.Errorf("write channel: %w", err)
		default:
			return fmt.Errorf("write channel: %w", io.ErrShortWrite)
		}
	}
	return nil
}

func (s *fdStream) Close() error {
	var err error
	s.once.Do(func() {
		err = errors.Join(unix.Close(s.fd), s.w.close())
	})
	return err
}

// deviceChannel is a channel that is one stream for its whole life.
type deviceChannel struct{ s *fdStream }

func (c *deviceChannel) Accept(ctx context.Context) (Stream, error) { return c.s, ctx.Err() }
func (c *deviceChannel) PerClient() bool                            { return false }
func (c *deviceChannel) Close() error                               { return c.s.Close() }

// NewDeviceChannel wraps an open file descriptor (set non-blocking here) as a device channel;
// the channel owns fd. It serves tests that use a socketpair in place of a virtio port.
func NewDeviceChannel(fd int, opts Options) (Channel, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("set channel non-blocking: %w", err)
	}
	s, err := newFDStream(fd, true, opts)
	if err != nil {
		return nil, err
	}
	return &deviceChannel{s: s}, nil
}
