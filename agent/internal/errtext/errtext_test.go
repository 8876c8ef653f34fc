package errtext

import (
	"fmt"
	"os"
	"syscall"
	"testing"
)

func TestStrerrorMatchesGlibc(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{syscall.ENOENT, "No such file or directory"},
		{syscall.ENOTTY, "Inappropriate ioctl for device"},
		{syscall.EOPNOTSUPP, "Operation not supported"},
		{syscall.Errno(41), "Unknown error 41"},
		{syscall.Errno(133), "Memory page has hardware error"},
		{fmt.Errorf("open: %w", &os.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}), "Permission denied"},
		{fmt.Errorf("plain"), "plain"},
	} {
		if got := Strerror(c.err); got != c.want {
			t.Errorf("Strerror(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestPathErrno(t *testing.T) {
	_, err := os.Open("/nonexistent/qgakit")
	if got := PathErrno(err); got != syscall.ENOENT {
		t.Fatalf("PathErrno = %v", got)
	}
}
