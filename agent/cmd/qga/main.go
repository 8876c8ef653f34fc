// Command qga is the guest agent: a drop-in replacement for qemu-ga 7.2 with its command line,
// configuration file, transports and wire behaviour (see qga -h).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/qgakit/qgakit/agent/config"
	"github.com/qgakit/qgakit/schema"
)

// version is set at build time (-ldflags "-X main.version=..."); -V prints it and guest-info
// reports it.
var version = "qgakit-dev"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// glibMessage prints a message the way GLib's default handler does before the agent's own
// logger is set up, as the reference's early errors look.
func glibMessage(w io.Writer, level, format string, a ...any) {
	fmt.Fprintf(w, "\n** (process:%d): %s **: %s: %s\n", os.Getpid(), level,
		time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}

func run(args []string, stdout, stderr io.Writer) int {
	prog := args[0]
	inv, err := config.Parse(args[1:], os.Getenv)
	if err != nil {
		glibMessage(stderr, "CRITICAL", "%v", err)
		return 1
	}
	for _, w := range inv.Warnings {
		glibMessage(stderr, "WARNING", "%s", w)
	}
	switch inv.Action {
	case config.Help:
		usage(stdout, prog)
		return 0
	case config.Version:
		fmt.Fprintf(stdout, "QEMU Guest Agent %s\n", version)
		return 0
	case config.ListCommands:
		for _, name := range schema.MustLoad().CommandNames() {
			fmt.Fprintln(stdout, name)
		}
		return 0
	case config.UnknownOption:
		fmt.Fprintf(stderr, "%s: %s\n", prog, inv.GetoptErr.Msg)
		fmt.Fprintf(stdout, "Unknown option, try '%s --help' for more information.\n", prog)
		return 1
	case config.DumpConf:
		// Like the other prints here and the reference's, a failed write does not change
		// the exit status.
		fmt.Fprint(stdout, inv.Dump())
		return 0
	}
	a := &agent{cfg: inv.Config, stderr: stderr}
	if err := a.start(); err != nil {
		var ex *exitError
		if errors.As(err, &ex) {
			return ex.code
		}
		return 1
	}
	return a.serve()
}

// exitError ends the process with a status after its message has been logged; the message
// also goes to the parent of a daemon, whose standard error is still the user's.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// failed is the error of a start-up failure that was logged as msg.
func failed(msg string) error { return &exitError{code: 1, msg: msg} }
