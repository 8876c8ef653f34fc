// Package commands holds the handlers of the agent's commands, one file per command group.
// Handlers reach the system only through Env, so tests can point them at a temporary tree of
// real files instead of the machine's /sys, /proc and /dev.
package commands

import (
	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/state"
)

// Env is what handlers may touch.
type Env struct {
	State *state.State
	// Root prefixes every absolute system path a handler uses (/sys, /proc, /dev, /etc,
	// /sbin): "" on a real system, a temp tree in tests.
	Root string
	// Path is the search path for helper programs (systemctl, pm-is-supported, hwclock
	// fallback); "" means $PATH.
	Path string
	// FsfreezeHook is the -F hook; "" means none.
	FsfreezeHook string
	// Version is what guest-info reports.
	Version string
	// Info lists the commands for guest-info (the dispatcher's Info).
	Info func() []dispatch.CommandInfo
}

// Register installs every command handler into d.
func Register(d *dispatch.Dispatcher, env *Env) {
	for _, register := range groups {
		register(d, env)
	}
}

// groups are the command groups; each file adds its own from an init function, so that adding
// a group touches one file.
var groups []func(*dispatch.Dispatcher, *Env)
