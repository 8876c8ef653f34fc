// Package dispatch runs requests: it checks the request object and the command's arguments
// against the schema with the reference's error texts, applies the block and allow lists and
// the frozen-state allowlist, calls the command's handler and builds the response.
package dispatch

import (
	"context"

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

// Dispatcher holds the command table.
type Dispatcher struct {
	schema *schema.Schema
	opts   Options
}

// New returns a dispatcher for the commands of s.
func New(s *schema.Schema, opts Options) *Dispatcher { return &Dispatcher{schema: s, opts: opts} }

// Register sets the handler of a schema command. It panics for a name the schema lacks.
func (d *Dispatcher) Register(name string, h Handler) { panic("dispatch: Register not written yet") }

// Dispatch answers one decoded message. reply is false when nothing must be sent (a command
// without success-response that succeeded).
func (d *Dispatcher) Dispatch(ctx context.Context, m protocol.Message) (resp protocol.Response, reply bool) {
	panic("dispatch: Dispatch not written yet")
}

// Info lists every registered command in guest-info's order with its current state.
func (d *Dispatcher) Info() []CommandInfo { panic("dispatch: Info not written yet") }
