// Package dispatch runs requests: it checks the request object and the command's arguments
// against the schema with the reference's error texts, applies the block and allow lists and
// the frozen-state allowlist, calls the command's handler and builds the response.
//
// The checks run in the order of QEMU 7.2's qmp_dispatch (qapi/qmp-dispatch.c): the request
// object, the command's existence, whether it is enabled, its arguments, the handler.
//
// Disabled commands, compared with qemu-ga 7.2: the reference keeps one "disabled" flag and a
// reason per command, overwritten by whatever disabled it last, so its text depends on
// history. Here the text depends only on the state now:
//   - while frozen, a command outside FrozenAllowlist is "disabled: the agent is in frozen
//     state", whether or not it is also blocked (the reference's text after a freeze at run
//     time; an agent that starts frozen says plain "has been disabled" for blocked commands);
//   - otherwise a blocked command, or one missing from a non-empty allow list (which 7.2 does
//     not have), is plain "has been disabled" (the reference keeps the frozen text for blocked
//     commands after a thaw).
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/schema"
)

// Args are a command's arguments after schema checking: every mandatory member is present with
// its schema type and optional members that were not given are absent. int types are int64
// (uint64 for 'uint64'), 'str' and enums are string, 'bool' is bool, structs are Args, lists
// are []any, and an alternate holds the value of the branch that matched.
type Args map[string]any

// Handler runs one command. A *protocol.Error is sent as it is; any other error is sent as a
// GenericError with its text.
type Handler func(ctx context.Context, args Args) (any, error)

// Delimited wraps a handler's return value to have its reply prefixed with 0xFF.
type Delimited struct{ Value any }

// CommandInfo is one entry of guest-info's supported_commands.
type CommandInfo struct {
	Name            string `json:"name"`
	Enabled         bool   `json:"enabled"`
	SuccessResponse bool   `json:"success-response"`
}

// FrozenAllowlist are the commands that stay enabled while filesystems are frozen.
var FrozenAllowlist = []string{
	"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
	"guest-fsfreeze-status", "guest-fsfreeze-thaw",
}

// Options configure a Dispatcher.
type Options struct {
	Blocked []string    // -b/--block-rpcs: these are disabled
	Allowed []string    // -a/--allow-rpcs: when non-empty, only these are enabled
	Frozen  func() bool // reports the frozen state; nil means never frozen
}

// Dispatcher holds the command table. Register may run concurrently with Dispatch and Info.
type Dispatcher struct {
	schema *schema.Schema
	opts   Options
	args   checker

	// A request's command name is compared exactly, byte for byte: a list cannot be bypassed
	// with another case, surrounding blanks or an alias. The names in the lists are taken
	// without surrounding blanks and in lower case (see listSet).
	blocked     map[string]bool
	allowed     map[string]bool // nil: no allow list
	frozenAllow map[string]bool

	mu       sync.RWMutex
	handlers map[string]Handler
}

// New returns a dispatcher for the commands of s.
func New(s *schema.Schema, opts Options) *Dispatcher {
	d := &Dispatcher{
		schema:      s,
		opts:        opts,
		args:        checker{s: s},
		blocked:     listSet(opts.Blocked),
		frozenAllow: set(FrozenAllowlist),
		handlers:    map[string]Handler{},
	}
	if len(opts.Allowed) > 0 {
		d.allowed = listSet(opts.Allowed)
	}
	return d
}

// listSet is the set of an administrator's list. The reference splits "-b guest-ping,
// guest-file-open" at the comma only and then blocks " guest-file-open", which names nothing,
// so guest-file-open runs (its log even says "disabling command:  guest-file-open"). Command
// names have no blanks and no capitals, so an entry with them can only mean the command
// without them: blocking it fails closed, and allowing it allows what was meant.
func listSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[strings.ToLower(strings.TrimSpace(n))] = true
	}
	return m
}

func set(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// Register sets the handler of a schema command. It panics for a name the schema lacks.
func (d *Dispatcher) Register(name string, h Handler) {
	if d.schema.Command(name) == nil {
		panic(fmt.Sprintf("dispatch: Register(%q): the schema has no such command", name))
	}
	if h == nil {
		panic(fmt.Sprintf("dispatch: Register(%q): nil handler", name))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.handlers[name] = h
}

func (d *Dispatcher) handler(name string) Handler {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.handlers[name]
}

// disabled returns the reason suffix of the "has been disabled" error, and whether the
// command is disabled at all.
func (d *Dispatcher) disabled(name string) (reason string, off bool) {
	if d.opts.Frozen != nil && !d.frozenAllow[name] && d.opts.Frozen() {
		return ": the agent is in frozen state", true
	}
	if d.blocked[name] || (d.allowed != nil && !d.allowed[name]) {
		return "", true
	}
	return "", false
}

// Dispatch answers one decoded message. reply is false when nothing must be sent (a command
// without success-response that succeeded).
func (d *Dispatcher) Dispatch(ctx context.Context, m protocol.Message) (resp protocol.Response, reply bool) {
	if m.Err != nil {
		// Parse errors never carry an id: there is no request object to take it from.
		return protocol.Response{Err: m.Err}, true
	}
	req, ok := asObject(m.Value)
	if !ok {
		return protocol.Response{Err: protocol.Errorf("QMP input must be a JSON object")}, true
	}
	resp.ID, resp.HasID = req["id"]
	ret, delimited, send, err := d.run(ctx, req)
	if err != nil {
		resp.Err = err
		return resp, true
	}
	if !send {
		return protocol.Response{}, false
	}
	resp.Return, resp.Delimited = ret, delimited
	return resp, true
}

func (d *Dispatcher) run(ctx context.Context, req map[string]any) (ret any, delimited, send bool, perr *protocol.Error) {
	if err := checkRequest(req); err != nil {
		return nil, false, true, err
	}
	name := req["execute"].(string)
	cmd := d.schema.Command(name)
	h := d.handler(name)
	if cmd == nil || h == nil {
		return nil, false, true, &protocol.Error{Class: protocol.ClassCommandNotFound,
			Desc: fmt.Sprintf("The command %s has not been found", name)}
	}
	if reason, off := d.disabled(name); off {
		return nil, false, true, &protocol.Error{Class: protocol.ClassCommandNotFound,
			Desc: fmt.Sprintf("Command %s has been disabled%s", name, reason)}
	}
	argObj, _ := asObject(req["arguments"]) // absent: nil, which has no members
	args, perr := d.args.object("", cmd.Args, argObj)
	if perr != nil {
		return nil, false, true, perr
	}
	ret, err := call(ctx, h, args)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return nil, false, true, pe
		}
		return nil, false, true, protocol.Errorf("%s", err.Error())
	}
	if !cmd.SuccessResponse {
		return nil, false, false, nil
	}
	switch v := ret.(type) {
	case Delimited:
		return v.Value, true, true, nil
	case *Delimited:
		if v != nil {
			return v.Value, true, true, nil
		}
		return nil, true, true, nil
	}
	return ret, false, true, nil
}

// call runs a handler and turns a panic into an error reply: one faulty command must not
// take the agent, and with it every other command, away from the host.
func call(ctx context.Context, h Handler, args Args) (ret any, err error) {
	defer func() {
		if r := recover(); r != nil {
			ret, err = nil, fmt.Errorf("internal error: %v", r)
		}
	}()
	return h(ctx, args)
}

// checkRequest is qmp_dispatch_check_obj with allow_oob false: members are judged in QDict
// order and the first bad one is reported.
func checkRequest(req map[string]any) *protocol.Error {
	hasExecute := false
	for _, k := range qdictOrder(req) {
		v := req[k]
		switch k {
		case "execute":
			if _, ok := v.(string); !ok {
				return protocol.Errorf("QMP input member 'execute' must be a string")
			}
			hasExecute = true
		case "arguments":
			if _, ok := asObject(v); !ok {
				return protocol.Errorf("QMP input member 'arguments' must be an object")
			}
		case "id":
		default:
			return protocol.Errorf("QMP input member '%s' is unexpected", k)
		}
	}
	if !hasExecute {
		return protocol.Errorf("QMP input lacks member 'execute'")
	}
	return nil
}

// Info lists every registered command in guest-info's order with its current state. The
// reference prepends each command while walking them in registration (schema) order, so the
// list comes out in reverse schema order.
func (d *Dispatcher) Info() []CommandInfo {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]CommandInfo, 0, len(d.handlers))
	for i := len(d.schema.Commands) - 1; i >= 0; i-- {
		c := d.schema.Commands[i]
		if d.handlers[c.Name] == nil {
			continue
		}
		_, off := d.disabled(c.Name)
		out = append(out, CommandInfo{Name: c.Name, Enabled: !off, SuccessResponse: c.SuccessResponse})
	}
	return out
}
