// Package config is qemu-ga's configuration: the command line (getopt_long semantics), the
// GKeyFile configuration file and the -D dump, with the reference 7.2's defaults, precedence
// and texts. It only parses; acting on the result is the command's job.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// The reference's compiled-in paths on Debian.
const (
	DefaultVirtioPath   = "/dev/virtio-ports/org.qemu.guest_agent.0"
	DefaultSerialPath   = "/dev/ttyS0"
	DefaultStateDir     = "/var/run"
	DefaultPidFile      = "/var/run/qemu-ga.pid"
	DefaultFsfreezeHook = "/etc/qemu/fsfreeze-hook"
	DefaultConfigFile   = "/etc/qemu/qemu-ga.conf"
	DefaultMethod       = "virtio-serial"
)

// Config is the effective configuration.
type Config struct {
	Daemonize    bool
	Method       string
	Path         string // "" when not given and the method has no default
	LogFile      string // "" means stderr
	PidFile      string
	FsfreezeHook string // "" means no hook
	StateDir     string
	Verbose      bool
	RetryPath    bool
	// BlockRPCs and AllowRPCs are in the reference's order: each comma list reversed, lists
	// concatenated in the order given (config file first). Items may be empty strings.
	BlockRPCs []string
	AllowRPCs []string

	// given records the string settings that were set, even to "": the reference keeps an
	// empty --path= or statedir= instead of its default, and -D shows it.
	given map[string]bool
}

// set assigns a string setting and records that it was given.
func (c *Config) set(key string, dst *string, v string) {
	if c.given == nil {
		c.given = map[string]bool{}
	}
	c.given[key] = true
	*dst = v
}

// Action is what the invocation asks for.
type Action int

// The actions of a command line. The reference acts on -h, -V and "-b help" the moment it
// parses them, so the first one wins over anything later on the line.
const (
	Run           Action = iota
	DumpConf             // -D: print the effective configuration and exit
	Help                 // -h
	Version              // -V
	ListCommands         // -b help, -a help
	UnknownOption        // a getopt error; Invocation.GetoptErr says which
)

// Invocation is a parsed command line on top of the configuration file.
type Invocation struct {
	Config
	Action Action
	// ConfigFile is the file that was read ("" when none existed).
	ConfigFile string
	// Warnings are the reference's load-time warnings, to log before anything else.
	Warnings []string
	// GetoptErr is set with Action UnknownOption.
	GetoptErr *GetoptError
	// Operands are the non-option arguments, which the reference ignores.
	Operands []string
}

// LoadError is a configuration file that exists but cannot be used. Its text is the
// reference's critical message.
type LoadError struct {
	Path string
	Err  error
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("error loading configuration from path: %s, %v", e.Path, e.Err)
}

func (e *LoadError) Unwrap() error { return e.Err }

// ErrNoPath is the reference's error for unix-listen and vsock-listen without -p.
var ErrNoPath = errors.New("must specify a path for this channel")

// isHelp is QEMU's is_help_option: "help" or "?".
func isHelp(s string) bool { return s == "help" || s == "?" }

// Parse reads the configuration file and then the command line args (without the program
// name), which wins, and fills in the defaults. getenv supplies QGA_CONF. The file is -c's
// when given (it must exist), else $QGA_CONF, else DefaultConfigFile (either may be absent).
func Parse(args []string, getenv func(string) string) (*Invocation, error) {
	opts, operands, gerr := getopt(args)
	inv := &Invocation{Operands: operands}

	path, explicit := getenv("QGA_CONF"), false
	if path == "" {
		path = DefaultConfigFile
	}
	for _, o := range opts {
		if o.Name == 'c' {
			path, explicit = o.Arg, true
		}
	}
	if err := inv.load(path, explicit); err != nil {
		return nil, err
	}

	for _, o := range opts {
		switch o.Name {
		case 'm':
			inv.set("method", &inv.Method, o.Arg)
		case 'p':
			inv.set("path", &inv.Path, o.Arg)
		case 'l':
			inv.set("logfile", &inv.LogFile, o.Arg)
		case 'f':
			inv.set("pidfile", &inv.PidFile, o.Arg)
		case 'F':
			hook := DefaultFsfreezeHook
			if o.HasArg {
				hook = o.Arg
			}
			inv.set("fsfreeze-hook", &inv.FsfreezeHook, hook)
		case 't':
			inv.set("statedir", &inv.StateDir, o.Arg)
		case 'v':
			inv.Verbose = true
		case 'V':
			inv.Action = Version
			return inv, nil
		case 'd':
			inv.Daemonize = true
		case 'D':
			inv.Action = DumpConf
		case 'r':
			inv.RetryPath = true
		case 'b':
			if isHelp(o.Arg) {
				inv.Action = ListCommands
				return inv, nil
			}
			inv.BlockRPCs = append(inv.BlockRPCs, splitList(o.Arg)...)
		case 'a':
			if isHelp(o.Arg) {
				inv.Action = ListCommands
				return inv, nil
			}
			inv.AllowRPCs = append(inv.AllowRPCs, splitList(o.Arg)...)
		case 'h':
			inv.Action = Help
			return inv, nil
		}
	}
	if gerr != nil {
		// A bad option is a result, not a failure to parse: the caller reports it as the
		// reference does, after the options before it have acted.
		inv.Action, inv.GetoptErr = UnknownOption, gerr
		return inv, nil //nolint:nilerr // the option error travels in inv.GetoptErr
	}

	if !inv.given["pidfile"] {
		inv.PidFile = DefaultPidFile
	}
	if !inv.given["statedir"] {
		inv.StateDir = DefaultStateDir
	}
	if !inv.given["method"] {
		inv.Method = DefaultMethod
	}
	if !inv.given["path"] && !socketActivated(getenv) {
		switch inv.Method {
		case "virtio-serial":
			inv.Path = DefaultVirtioPath
		case "isa-serial":
			inv.Path = DefaultSerialPath
		default:
			return inv, ErrNoPath
		}
	}
	return inv, nil
}

// socketActivated reports whether systemd passed listening sockets; the reference then
// ignores the method and path and does not need a path.
func socketActivated(getenv func(string) string) bool {
	return getenv("LISTEN_FDS") != "" && getenv("LISTEN_PID") == fmt.Sprint(os.Getpid())
}

// splitList is the reference's split_list: split on "," and prepend each piece, so that
// "a,b" becomes [b a]. -D prints lists in this order, so it is observable.
func splitList(s string) []string {
	if s == "" {
		return nil
	}
	parts := strings.Split(s, ",")
	out := make([]string, len(parts))
	for i, p := range parts {
		out[len(parts)-1-i] = p
	}
	return out
}

// load reads the [general] group of the configuration file. A missing file is fine unless
// it was named with -c.
func (inv *Invocation) load(path string, mustExist bool) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !mustExist {
			return nil
		}
		return &LoadError{path, fmt.Errorf("Failed to open file \u201c%s\u201d: %w", path, unwrapPath(err))}
	}
	if !st.Mode().IsRegular() {
		return &LoadError{path, errors.New("Not a regular file")}
	}
	// Anyone could redirect the agent's channel, state and hook otherwise. The reference
	// reads such a file; refusing it is deliberate.
	if st.Mode().Perm()&0o002 != 0 {
		return &LoadError{path, fmt.Errorf("refusing a world-writable configuration file (mode %04o)", st.Mode().Perm())}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return &LoadError{path, fmt.Errorf("Failed to open file \u201c%s\u201d: %w", path, unwrapPath(err))}
	}
	kf, err := parseKeyFile(data)
	if err != nil {
		return &LoadError{path, err}
	}
	inv.ConfigFile = path
	const g = "general"
	// Like the reference, the first failing key aborts the load.
	var firstErr error
	str := func(key string, dst *string) {
		if firstErr == nil && kf.has(g, key) {
			var v string
			if v, firstErr = kf.str(g, key); firstErr == nil {
				inv.set(key, dst, v)
			}
		}
	}
	boolean := func(key string, dst *bool) {
		if firstErr == nil && kf.has(g, key) {
			*dst, firstErr = kf.boolean(g, key)
		}
	}
	boolean("daemon", &inv.Daemonize)
	str("method", &inv.Method)
	str("path", &inv.Path)
	str("logfile", &inv.LogFile)
	str("pidfile", &inv.PidFile)
	str("fsfreeze-hook", &inv.FsfreezeHook)
	str("statedir", &inv.StateDir)
	boolean("verbose", &inv.Verbose)
	boolean("retry-path", &inv.RetryPath)
	// 7.2 takes the deprecated key when both are present, and ignores block-rpcs then.
	var list string
	switch {
	case kf.has(g, "blacklist"):
		inv.Warnings = append(inv.Warnings, "config using deprecated 'blacklist' key, should be replaced with the 'block-rpcs' key.")
		str("blacklist", &list)
		inv.BlockRPCs = append(inv.BlockRPCs, splitList(list)...)
	case kf.has(g, "block-rpcs"):
		str("block-rpcs", &list)
		inv.BlockRPCs = append(inv.BlockRPCs, splitList(list)...)
	}
	if kf.has(g, "allow-rpcs") {
		list = ""
		str("allow-rpcs", &list)
		inv.AllowRPCs = append(inv.AllowRPCs, splitList(list)...)
	}
	if firstErr != nil {
		return &LoadError{path, firstErr}
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Dump renders c the way the reference's -D does (g_key_file_to_data of the [general]
// group), byte for byte. allow-rpcs, which 7.2 does not know, is written only when set.
func (c *Config) Dump() string {
	var b strings.Builder
	kv := func(k, v string) { b.WriteString(k + "=" + escapeValue(v) + "\n") }
	b.WriteString("[general]\n")
	kv("daemon", fmt.Sprint(c.Daemonize))
	kv("method", c.Method)
	if c.Path != "" || c.given["path"] {
		kv("path", c.Path)
	}
	if c.LogFile != "" || c.given["logfile"] {
		kv("logfile", c.LogFile)
	}
	kv("pidfile", c.PidFile)
	if c.FsfreezeHook != "" || c.given["fsfreeze-hook"] {
		kv("fsfreeze-hook", c.FsfreezeHook)
	}
	kv("statedir", c.StateDir)
	kv("verbose", fmt.Sprint(c.Verbose))
	kv("retry-path", fmt.Sprint(c.RetryPath))
	kv("block-rpcs", strings.Join(c.BlockRPCs, ","))
	if len(c.AllowRPCs) > 0 {
		kv("allow-rpcs", strings.Join(c.AllowRPCs, ","))
	}
	return b.String()
}
