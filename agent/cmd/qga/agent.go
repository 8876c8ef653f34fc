package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qgakit/qgakit/agent/commands"
	"github.com/qgakit/qgakit/agent/config"
	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
	"github.com/qgakit/qgakit/agent/server"
	"github.com/qgakit/qgakit/agent/state"
	"github.com/qgakit/qgakit/agent/transport"
	"github.com/qgakit/qgakit/schema"
)

// retryInterval is the reference's QGA_RETRY_INTERVAL.
const retryInterval = 5 * time.Second

// agent is one running agent process.
type agent struct {
	cfg    config.Config
	stderr io.Writer
	log    *server.Logger
	st     *state.State
	env    *commands.Env
	d      *dispatch.Dispatcher
	ready  *readiness // set in a daemon child

	pidfile        *pidFile
	deferredPid    bool // -d while frozen at start: the pidfile waits for the thaw
	wasFrozen      atomic.Bool
	activated      transport.Channel
	activationMeth string
}

// start prepares everything the reference prepares before it opens the channel, in its
// order; it logs its own errors.
func (a *agent) start() error {
	if a.cfg.Daemonize {
		r, err := becomeDaemon()
		if err != nil {
			glibMessage(a.stderr, "CRITICAL", "failed to daemonize: %v", err)
			return failed(err.Error())
		}
		if r == nil {
			panic("unreachable: the parent of a daemon exits in becomeDaemon")
		}
		a.ready = r
	}
	err := a.init()
	if err != nil {
		a.ready.fail(err)
	}
	return err
}

func (a *agent) init() error {
	st, err := state.Open(a.cfg.StateDir)
	if err != nil {
		a.log = server.NewLogger(a.stderr, "", a.cfg.Verbose)
		a.log.Criticalf("failed to load persistent state: %v", err)
		a.log.Criticalf("error initializing guest agent")
		return failed(fmt.Sprintf("failed to load persistent state: %v", err))
	}
	a.st = st
	frozen := st.Frozen()
	a.wasFrozen.Store(frozen)
	if frozen {
		glibMessage(a.stderr, "WARNING", "previous instance appears to have exited with frozen"+
			" filesystems. deferring logging/pidfile creation and disabling non-fsfreeze-safe"+
			" commands until guest-fsfreeze-thaw is issued, or filesystems are manually unfrozen"+
			" and the file %s/%s is removed", a.cfg.StateDir, state.FrozenFile)
	}

	switch {
	case a.cfg.LogFile != "" && frozen:
		a.log = server.NewLogger(nil, a.cfg.LogFile, a.cfg.Verbose)
	case a.cfg.LogFile != "":
		f, err := server.OpenLogFile(a.cfg.LogFile)
		if err != nil {
			a.log = server.NewLogger(a.stderr, "", a.cfg.Verbose)
			msg := "unable to open specified log file: " + errtext.Strerror(err)
			a.log.Criticalf("%s", msg)
			a.log.Criticalf("error initializing guest agent")
			return failed(msg)
		}
		a.log = server.NewLogger(f, "", a.cfg.Verbose)
	default:
		a.log = server.NewLogger(a.stderr, "", a.cfg.Verbose)
	}
	// Nothing is written while frozen: the log file may be on a frozen filesystem, and the
	// write would block the agent until a thaw that it could then never receive.
	a.log.Enabled = func() bool { return !st.Frozen() }

	if a.cfg.Daemonize {
		if frozen {
			a.deferredPid = true
		} else if a.pidfile, err = writePidfile(a.cfg.PidFile); err != nil {
			a.log.Criticalf("%v", err)
			return failed(err.Error())
		}
	}

	a.log.Debugf("Guest agent version %s started", version)
	a.d = dispatch.New(schema.MustLoad(), dispatch.Options{
		Blocked: a.cfg.BlockRPCs,
		Allowed: a.cfg.AllowRPCs,
		Frozen:  st.Frozen,
	})
	for _, name := range a.cfg.BlockRPCs {
		a.log.Debugf("disabling command: %s", name)
	}
	a.env = &commands.Env{
		State:        st,
		FsfreezeHook: a.cfg.FsfreezeHook,
		Version:      version,
		Info:         a.d.Info,
	}
	commands.Register(a.d, a.env)

	fd, method, ok, err := transport.SocketActivation()
	switch {
	case err != nil:
		a.log.Criticalf("%v", err)
		return failed(err.Error())
	case ok:
		ch, err := transport.FromListener(fd, transport.Options{Debugf: a.log.Debugf})
		if err != nil {
			a.log.Criticalf("%v", err)
			return failed(err.Error())
		}
		a.activated, a.activationMeth = ch, method
	}
	return nil
}

// afterMessage catches the thaw: the reference re-enables logging then and writes a pidfile
// it deferred at start-up.
func (a *agent) afterMessage() {
	frozen := a.st.Frozen()
	if a.wasFrozen.Swap(frozen) == frozen || frozen {
		return
	}
	a.log.Warningf("logging re-enabled due to filesystem unfreeze")
	if a.deferredPid {
		a.deferredPid = false
		p, err := writePidfile(a.cfg.PidFile)
		if err != nil {
			a.log.Warningf("%v", err)
		} else {
			a.pidfile = p
		}
	}
}

func (a *agent) openChannel() (transport.Channel, error) {
	if a.activated != nil {
		return a.activated, nil
	}
	return transport.Open(a.cfg.Method, a.cfg.Path, transport.Options{Debugf: a.log.Debugf})
}

// serve runs the agent until a signal or, without -r, a channel failure; it returns the
// exit status.
func (a *agent) serve() int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signal.Ignore(syscall.SIGPIPE)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			// A frozen guest must be thawed through the agent: quitting now would leave it
			// frozen with nobody to thaw it.
			if a.st.Frozen() {
				continue
			}
			a.log.Debugf("received signal num %d, quitting", sig.(syscall.Signal))
			cancel()
			return
		}
	}()

	srv := &server.Server{Dispatcher: a.d, Log: a.log, AfterMessage: a.afterMessage}
	status := 0
	for {
		ch, err := a.openChannel()
		if err != nil {
			a.log.Criticalf("%v", err)
			a.log.Criticalf("failed to create guest agent channel")
			a.log.Criticalf("failed to initialize guest agent channel")
			if !a.cfg.RetryPath {
				a.ready.fail(err)
				status = 1
				break
			}
			// A daemon that will keep retrying has started as far as its parent cares.
			a.ready.ok()
		} else {
			a.ready.ok()
			srv.Channel = ch
			// Serve logs why it stopped; the reference then exits with status 0, or
			// reopens the channel with -r.
			_ = srv.Serve(ctx)
			if ch != a.activated {
				ch.Close()
			}
			if ctx.Err() != nil || !a.cfg.RetryPath {
				break
			}
		}
		a.log.Warningf("agent stopped unexpectedly, restarting...")
		a.log.Warningf("waiting for channel path...")
		t := time.NewTimer(retryInterval)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			break
		}
	}
	a.shutdown()
	return status
}

// shutdown thaws a guest the agent left frozen and removes the pidfile.
func (a *agent) shutdown() {
	if err := commands.Cleanup(a.env); err != nil {
		a.log.Criticalf("%v", err)
	}
	if a.activated != nil {
		a.activated.Close()
	}
	if a.pidfile != nil {
		a.pidfile.remove()
	}
}

// readiness tells the parent of a daemon whether the child started. A nil readiness (no
// daemon) ignores both calls.
type readiness struct {
	f    *os.File
	done bool
}

func (r *readiness) ok() { r.send("ok") }

func (r *readiness) fail(err error) {
	r.send("failed: " + strings.ReplaceAll(err.Error(), "\n", " "))
}

func (r *readiness) send(msg string) {
	if r == nil || r.done {
		return
	}
	r.done = true
	fmt.Fprintln(r.f, msg)
	r.f.Close()
}
