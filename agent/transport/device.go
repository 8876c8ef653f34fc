package transport

import (
	"fmt"

	"github.com/qgakit/qgakit/agent/internal/errtext"
	"golang.org/x/sys/unix"
)

// openVirtio opens a virtio-serial port once, like the reference; the port stays open while
// the host connects and disconnects.
func openVirtio(path string, opts Options) (Channel, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("error opening channel '%s': %s", path, errtext.Strerror(err))
	}
	return NewDeviceChannel(fd, opts)
}

// serialBaud is the reference's fixed line speed.
const serialBaud = unix.B38400

// openSerial opens a serial line in raw mode at 38400 baud and drops input that arrived
// before the agent: it is garbage from an earlier boot stage or agent.
func openSerial(path string, opts Options) (Channel, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("error opening channel '%s': %s", path, errtext.Strerror(err))
	}
	if err := makeRaw(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("error opening channel '%s': %w", path, err)
	}
	return NewDeviceChannel(fd, opts)
}

func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("get terminal attributes: %s", errtext.Strerror(err))
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.IGNPAR | unix.PARMRK | unix.INPCK | unix.ISTRIP |
		unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF | unix.IXANY | unix.IMAXBEL
	t.Oflag = 0
	t.Lflag = 0
	t.Cflag = t.Cflag&^(unix.CBAUD|unix.CSIZE|unix.PARENB) | serialBaud | unix.CS8 | unix.CREAD | unix.CLOCAL
	t.Ispeed, t.Ospeed = serialBaud, serialBaud
	// One byte is enough for a read; with O_NONBLOCK an empty line gives EAGAIN, not 0.
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH); err != nil {
		return fmt.Errorf("flush input: %s", errtext.Strerror(err))
	}
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("set terminal attributes: %s", errtext.Strerror(err))
	}
	return nil
}
