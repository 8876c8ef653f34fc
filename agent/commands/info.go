package commands

import (
	"context"

	"github.com/qgakit/qgakit/agent/dispatch"
)

// guestAgentInfo is the schema's GuestAgentInfo.
type guestAgentInfo struct {
	Version           string                 `json:"version"`
	SupportedCommands []dispatch.CommandInfo `json:"supported_commands"`
}

func init() {
	groups = append(groups, registerInfo)
}

func registerInfo(d *dispatch.Dispatcher, env *Env) {
	d.Register("guest-info", func(context.Context, dispatch.Args) (any, error) {
		return agentInfo(env), nil
	})
}

// agentInfo reports the version and the commands as they stand at this moment: enabled
// follows the block and allow lists and the frozen state.
func agentInfo(env *Env) guestAgentInfo {
	info := guestAgentInfo{Version: env.Version, SupportedCommands: []dispatch.CommandInfo{}}
	if env.Info != nil {
		if cmds := env.Info(); cmds != nil {
			info.SupportedCommands = cmds
		}
	}
	return info
}
