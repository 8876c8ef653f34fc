package main

import (
	"fmt"
	"io"

	"github.com/qgakit/qgakit/agent/config"
)

// usage is the reference's help text, with -a and -c, which 7.2 lacks.
func usage(w io.Writer, prog string) {
	fmt.Fprintf(w, `Usage: %s [-m <method> -p <path>] [<options>]
QEMU Guest Agent %s (qgakit)

  -m, --method      transport method: one of unix-listen, virtio-serial,
                    isa-serial, or vsock-listen (virtio-serial is the default)
  -p, --path        device/socket path (the default for virtio-serial is:
                    %s,
                    the default for isa-serial is:
                    %s).
                    Socket addresses for vsock-listen are written as
                    <cid>:<port>.
  -l, --logfile     set logfile path, logs to stderr by default
  -f, --pidfile     specify pidfile (default is %s)
  -F, --fsfreeze-hook
                    enable fsfreeze hook. Accepts an optional argument that
                    specifies script to run on freeze/thaw. Script will be
                    called with 'freeze'/'thaw' arguments accordingly.
                    (default is %s)
                    If using -F with an argument, do not follow -F with a
                    space.
                    (for example: -F/var/run/fsfreezehook.sh)
  -t, --statedir    specify dir to store state information (absolute paths
                    only, default is %s)
  -v, --verbose     log extra debugging information
  -V, --version     print version information and exit
  -d, --daemonize   become a daemon
  -b, --block-rpcs  comma-separated list of RPCs to disable (no spaces,
                    use "help" to list available RPCs)
  -a, --allow-rpcs  comma-separated list of RPCs to enable (no spaces,
                    use "help" to list available RPCs)
  -D, --dump-conf   dump a qemu-ga config file based on current config
                    options / command-line parameters to stdout
  -r, --retry-path  attempt re-opening path if it's unavailable or closed
                    due to an error which may be recoverable in the future
                    (virtio-serial driver re-install, serial device hot
                    plug/unplug, etc.)
  -c, --config      configuration file (default is $QGA_CONF or
                    %s)
  -h, --help        display this help and exit

`, prog, version, config.DefaultVirtioPath, config.DefaultSerialPath, config.DefaultPidFile,
		config.DefaultFsfreezeHook, config.DefaultStateDir, config.DefaultConfigFile)
}
