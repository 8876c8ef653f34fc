package transport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/qgakit/qgakit/agent/internal/errtext"
	"golang.org/x/sys/unix"
)

// listenChannel serves the clients of a listening socket one at a time, as the reference
// does: the next client is accepted once the current one has left.
type listenChannel struct {
	fd   int
	w    *waker
	opts Options
	once sync.Once
}

func newListenChannel(fd int, opts Options) (*listenChannel, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set listening socket non-blocking: %w", err)
	}
	w, err := newWaker()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &listenChannel{fd: fd, w: w, opts: opts}, nil
}

func (c *listenChannel) Accept(ctx context.Context) (Stream, error) {
	for {
		nfd, _, err := unix.Accept4(c.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
			return newFDStream(nfd, false, c.opts)
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			if _, err := c.w.wait(ctx, c.fd, unix.POLLIN); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("accept: %w", err)
		}
	}
}

func (c *listenChannel) PerClient() bool { return true }

func (c *listenChannel) Close() error {
	var err error
	c.once.Do(func() {
		// Like the reference, the socket file stays: the next agent replaces it.
		err = errors.Join(unix.Close(c.fd), c.w.close())
	})
	return err
}

// umaskMu serialises the umask change around bind: umask is process-wide.
var umaskMu sync.Mutex

// listenUnix listens on a unix socket at path. A stale socket file is replaced; any other
// file is left alone and reported. The socket file is created with mode 0600 (the reference
// leaves it to the umask): only root may talk to the agent.
func listenUnix(path string, opts Options) (Channel, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("Failed to bind socket to %s: %s", path, errtext.Errno(unix.EADDRINUSE))
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("Failed to create socket: %s", errtext.Strerror(err))
	}
	umaskMu.Lock()
	old := unix.Umask(0o177)
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	unix.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("Failed to bind socket to %s: %s", path, errtext.Strerror(err))
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return nil, fmt.Errorf("Failed to listen on socket: %s", errtext.Strerror(err))
	}
	return newListenChannel(fd, opts)
}

// ParseVsockAddr parses the reference's "<cid>:<port>".
func ParseVsockAddr(s string) (cid, port uint32, err error) {
	c, p, ok := strings.Cut(s, ":")
	cv, err1 := strconv.ParseUint(c, 10, 32)
	pv, err2 := strconv.ParseUint(p, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("error parsing address '%s'", s)
	}
	return uint32(cv), uint32(pv), nil
}

func listenVsock(addr string, opts Options) (Channel, error) {
	cid, port, err := ParseVsockAddr(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("failed to create vsock socket: %s", errtext.Strerror(err))
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("failed to bind vsock socket to %s: %s", addr, errtext.Strerror(err))
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("failed to listen on vsock socket %s: %s", addr, errtext.Strerror(err))
	}
	return newListenChannel(fd, opts)
}

// listenFDsStart is SD_LISTEN_FDS_START.
const listenFDsStart = 3

// SocketActivation reports the listening socket systemd passed (LISTEN_PID is this process,
// LISTEN_FDS=1) and the method it implies. ok is false without socket activation. The
// variables are removed so that helper programs do not inherit them.
func SocketActivation() (fd int, method string, ok bool, err error) {
	pid, nfds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if pid == "" || nfds == "" || pid != strconv.Itoa(os.Getpid()) {
		return 0, "", false, nil
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	switch n := listenFDCount(nfds); {
	case n < 1:
		return 0, "", false, nil
	case n > 1:
		return 0, "", true, errors.New("qemu-ga only supports listening on one socket")
	}
	unix.CloseOnExec(listenFDsStart)
	sa, err := unix.Getsockname(listenFDsStart)
	if err != nil {
		return 0, "", true, errors.New("unsupported listen fd type")
	}
	switch sa.(type) {
	case *unix.SockaddrUnix:
		return listenFDsStart, UnixListen, true, nil
	case *unix.SockaddrVM:
		return listenFDsStart, VsockListen, true, nil
	}
	return 0, "", true, errors.New("unsupported listen fd type")
}

// listenFDCount is LISTEN_FDS as a number, 0 when it is not one: a count that does not parse
// means no socket was passed, not a failure to start.
func listenFDCount(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0
	}
	return n
}

// FromListener wraps an already listening socket (socket activation); the channel owns fd.
func FromListener(fd int, opts Options) (Channel, error) {
	return newListenChannel(fd, opts)
}
