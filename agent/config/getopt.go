package config

import (
	"fmt"
	"strings"
)

// argKind says whether an option takes an argument, as getopt's has_arg does.
type argKind int

const (
	noArg argKind = iota
	requiredArg
	optionalArg
)

type longOpt struct {
	name string
	arg  argKind
	val  byte
}

// shortOpts and longOpts are the reference's option table ("hVvdm:p:l:f:F::b:s:t:Dr" and its
// long names, in its order, which getopt's ambiguity message shows), plus -a and -c from
// later qemu-ga releases.
const shortOpts = "hVvdm:p:l:f:F::b:a:t:Drc:"

var longOpts = []longOpt{
	{"help", noArg, 'h'},
	{"version", noArg, 'V'},
	{"dump-conf", noArg, 'D'},
	{"logfile", requiredArg, 'l'},
	{"pidfile", requiredArg, 'f'},
	{"fsfreeze-hook", optionalArg, 'F'},
	{"verbose", noArg, 'v'},
	{"method", requiredArg, 'm'},
	{"path", requiredArg, 'p'},
	{"daemonize", noArg, 'd'},
	{"block-rpcs", requiredArg, 'b'},
	{"blacklist", requiredArg, 'b'},
	{"allow-rpcs", requiredArg, 'a'},
	{"statedir", requiredArg, 't'},
	{"retry-path", noArg, 'r'},
	{"config", requiredArg, 'c'},
}

// option is one parsed option: its short letter and argument (HasArg is false for an
// optional argument that was not given).
type option struct {
	Name   byte
	Arg    string
	HasArg bool
}

// GetoptError is a command line getopt_long rejects; Msg is getopt's own diagnostic without
// the program name ("unrecognized option '--foo'").
type GetoptError struct{ Msg string }

func (e *GetoptError) Error() string { return e.Msg }

// getopt splits args (without the program name) the way glibc's getopt_long does with a
// permuting optstring: options anywhere, "--" ends them, clustered short options, attached or
// separate arguments, optional arguments only when attached, and unique prefixes of long
// names. Operands are returned separately. Parsing stops at the first error, which is
// returned together with the options before it, because the reference acts on those first
// (-h before a bad option still prints help).
func getopt(args []string) (opts []option, operands []string, err *GetoptError) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return opts, append(operands, args[i+1:]...), nil
		case strings.HasPrefix(a, "--"):
			o, consumed, e := parseLong(a[2:], args[i+1:])
			if e != nil {
				return opts, operands, e
			}
			i += consumed
			opts = append(opts, o)
		case len(a) > 1 && a[0] == '-':
		cluster:
			for j := 1; j < len(a); j++ {
				c := a[j]
				idx := strings.IndexByte(shortOpts, c)
				if idx < 0 || c == ':' {
					return opts, operands, &GetoptError{fmt.Sprintf("invalid option -- '%c'", c)}
				}
				kind := noArg
				if idx+1 < len(shortOpts) && shortOpts[idx+1] == ':' {
					kind = requiredArg
					if idx+2 < len(shortOpts) && shortOpts[idx+2] == ':' {
						kind = optionalArg
					}
				}
				rest := a[j+1:]
				switch kind {
				case noArg:
					opts = append(opts, option{Name: c})
					continue
				case optionalArg:
					opts = append(opts, option{Name: c, Arg: rest, HasArg: rest != ""})
				case requiredArg:
					switch {
					case rest != "":
						opts = append(opts, option{Name: c, Arg: rest, HasArg: true})
					case i+1 < len(args):
						i++
						opts = append(opts, option{Name: c, Arg: args[i], HasArg: true})
					default:
						return opts, operands, &GetoptError{fmt.Sprintf("option requires an argument -- '%c'", c)}
					}
				}
				break cluster
			}
		default:
			operands = append(operands, a)
		}
	}
	return opts, operands, nil
}

func parseLong(body string, rest []string) (option, int, *GetoptError) {
	name, value, hasValue := strings.Cut(body, "=")
	var match *longOpt
	var candidates []*longOpt
	ambiguous := false
	for k := range longOpts {
		lo := &longOpts[k]
		if lo.name == name {
			match, ambiguous = lo, false
			break
		}
		if !strings.HasPrefix(lo.name, name) {
			continue
		}
		candidates = append(candidates, lo)
		if match == nil {
			match = lo
		} else if match.arg != lo.arg || match.val != lo.val {
			ambiguous = true
		}
	}
	if ambiguous {
		var b strings.Builder
		fmt.Fprintf(&b, "option '--%s' is ambiguous; possibilities:", name)
		for _, c := range candidates {
			fmt.Fprintf(&b, " '--%s'", c.name)
		}
		return option{}, 0, &GetoptError{b.String()}
	}
	if match == nil {
		return option{}, 0, &GetoptError{fmt.Sprintf("unrecognized option '--%s'", body)}
	}
	switch match.arg {
	case noArg:
		if hasValue {
			return option{}, 0, &GetoptError{fmt.Sprintf("option '--%s' doesn't allow an argument", match.name)}
		}
		return option{Name: match.val}, 0, nil
	case optionalArg:
		return option{Name: match.val, Arg: value, HasArg: hasValue}, 0, nil
	default:
		if hasValue {
			return option{Name: match.val, Arg: value, HasArg: true}, 0, nil
		}
		if len(rest) == 0 {
			return option{}, 0, &GetoptError{fmt.Sprintf("option '--%s' requires an argument", match.name)}
		}
		return option{Name: match.val, Arg: rest[0], HasArg: true}, 1, nil
	}
}
