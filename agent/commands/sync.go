package commands

import (
	"context"

	"github.com/qgakit/qgakit/agent/dispatch"
)

// The sync commands let a host find the start of its own reply in a stream that may hold stale
// data from an earlier client (qga/commands.c).
func init() {
	groups = append(groups, registerSync)
}

func registerSync(d *dispatch.Dispatcher, _ *Env) {
	d.Register("guest-sync-delimited", func(_ context.Context, args dispatch.Args) (any, error) {
		id, _ := args.Int("id")
		// The 0xFF before this reply tells the host to reset its JSON parser.
		return dispatch.Delimited{Value: id}, nil
	})
	d.Register("guest-sync", func(_ context.Context, args dispatch.Args) (any, error) {
		id, _ := args.Int("id")
		return id, nil
	})
	d.Register("guest-ping", func(context.Context, dispatch.Args) (any, error) {
		return nil, nil
	})
}
