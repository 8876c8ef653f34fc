// Package errtext renders system errors the way the reference agent does: with glibc's
// strerror() text, which clients show to people and conformance tests compare.
package errtext

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Strerror returns glibc's text for the errno inside err ("No such file or directory"), or
// err's own text when it carries no errno.
func Strerror(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	return Errno(errno)
}

// Errno returns glibc's strerror() text for e.
func Errno(e syscall.Errno) string {
	// Go's table is glibc's, lower-cased at the start; only its unknown entries differ.
	s := e.Error()
	switch {
	case e == 133:
		return "Memory page has hardware error"
	case s == fmt.Sprintf("errno %d", int(e)):
		return fmt.Sprintf("Unknown error %d", int(e))
	case s != "" && s[0] >= 'a' && s[0] <= 'z':
		return string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

// PathErrno extracts the errno of an os/fs error, or 0 when there is none.
func PathErrno(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return PathErrno(pe.Err)
	}
	if errors.Is(err, os.ErrNotExist) {
		return syscall.ENOENT
	}
	return 0
}
