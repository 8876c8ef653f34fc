package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// waker lets a context interrupt poll(2): every wait also polls an eventfd that a context's
// cancellation writes to.
type waker struct{ efd int }

func newWaker() (*waker, error) {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	return &waker{efd: efd}, nil
}

func (w *waker) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(w.efd, one[:])
}

func (w *waker) drain() {
	var buf [8]byte
	_, _ = unix.Read(w.efd, buf[:])
}

func (w *waker) close() error { return unix.Close(w.efd) }

// wait blocks until fd reports one of events (or an error condition) and returns what it
// reported, or returns ctx's error once ctx is done.
func (w *waker) wait(ctx context.Context, fd int, events int16) (int16, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, w.wake)
	defer stop()
	for {
		fds := []unix.PollFd{
			{Fd: int32(fd), Events: events},
			{Fd: int32(w.efd), Events: unix.POLLIN},
		}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return 0, fmt.Errorf("poll: %w", err)
		}
		if fds[1].Revents != 0 {
			// A wake-up may be left over from an earlier context: only ours counts.
			w.drain()
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
		if fds[0].Revents&unix.POLLNVAL != 0 {
			return 0, fmt.Errorf("poll: %w", unix.EBADF)
		}
		if fds[0].Revents != 0 {
			return fds[0].Revents, nil
		}
	}
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
