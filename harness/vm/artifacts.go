package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/qgakit/qgakit/harness/qga"
)

// Artifacts writes what a failed spec needs to be understood into dir (created if needed):
//
//	qemu-cmdline.txt  the full QEMU command line, shell-quoted
//	serial0.log       the guest's ttyS0 (kernel log, TINY: events)
//	console.log       the console shell's transcript (ttyS1)
//	qmp.log           every QMP command, reply and event, timestamped
//	qga.log           every agent exchange, across attaches, timestamped
//	qemu-output.log   QEMU's own stdout and stderr
//	status.txt        pid, temp dir, exit state
//
// It works before and after Close: everything is kept in memory.
func (v *VM) Artifacts(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("vm: artifacts: %w", err)
	}
	write := func(name string, fill func(io.Writer) error) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := fill(f); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	bytesOf := func(b []byte) func(io.Writer) error {
		return func(w io.Writer) error { _, err := w.Write(b); return err }
	}
	status := fmt.Sprintf("name: %s\npid: %d\ndir: %s\n", v.cfg.name, v.pid, v.dir)
	// A QEMU that has just crashed has closed its sockets (the spec failed on that) but may not
	// be reaped yet: wait a moment for its exit state, the first thing a reader wants then,
	// rather than report it still running.
	if v.pid > 0 && exiting(v.pid) {
		select {
		case <-v.exited:
		case <-time.After(reapWait):
		}
	}
	select {
	case <-v.exited:
		status += fmt.Sprintf("exit: %v\n", v.state)
	default:
		status += "exit: still running\n"
	}
	type artifact struct {
		name string
		fill func(io.Writer) error
	}
	files := []artifact{
		{"qemu-cmdline.txt", bytesOf([]byte(reproduceNote + shellJoin(v.argv) + "\n"))},
		{"status.txt", bytesOf([]byte(status))},
		{"qemu-output.log", bytesOf(v.output.Bytes())},
	}
	if v.serial != nil {
		files = append(files, artifact{"serial0.log", bytesOf(v.serial.bytes())})
	}
	if v.console != nil {
		files = append(files, artifact{"console.log", func(w io.Writer) error { _, err := v.console.tr.WriteTo(w); return err }})
	}
	if v.qmp != nil {
		files = append(files, artifact{"qmp.log", func(w io.Writer) error { _, err := v.qmp.Transcript().WriteTo(w); return err }})
	}
	v.amu.Lock()
	trs := append([]*qga.Transcript(nil), v.oldAgentTrs...)
	if v.agent != nil {
		trs = append(trs, v.agent.Transcript())
	}
	v.amu.Unlock()
	files = append(files, artifact{"qga.log", func(w io.Writer) error {
		for i, tr := range trs {
			fmt.Fprintf(w, "=== agent connection %d\n", i+1)
			if _, err := tr.WriteTo(w); err != nil {
				return err
			}
		}
		return nil
	}})
	var errs []string
	for _, f := range files {
		if err := write(f.name, f.fill); err != nil {
			errs = append(errs, f.name+": "+err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("vm: artifacts in %s: %s", dir, strings.Join(errs, "; "))
	}
	return nil
}

// reapWait bounds how long Artifacts waits for a dying QEMU to be reaped.
const reapWait = 10 * time.Second

// exiting reports whether process pid is on its way out: gone, a zombie, or inside exit (the
// kernel's PF_EXITING flag, set before it closes the process's files).
func exiting(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ppid pgrp session tty_nr tpgid flags ...; comm may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 7 {
		return false
	}
	if f[0] == "Z" || f[0] == "X" {
		return true
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	return err == nil && flags&pfExiting != 0
}

// pfExiting is PF_EXITING of include/linux/sched.h.
const pfExiting = 0x4

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// ArtifactDir is root/<spec name made safe for a file name>, at most 120 characters of it.
func ArtifactDir(root, specName string) string {
	name := strings.Trim(unsafeName.ReplaceAllString(specName, "_"), "_.")
	if len(name) > 120 {
		name = name[:120]
	}
	if name == "" {
		name = "unnamed"
	}
	return filepath.Join(root, name)
}

// TB is the part of testing.TB (and of Ginkgo's GinkgoT()) that StartT uses.
type TB interface {
	Helper()
	Name() string
	Failed() bool
	Cleanup(func())
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// StartT starts a VM for a test: the log goes to tb.Logf (unless an option says otherwise), and
// cleanup writes artifacts to $ARTIFACTS/<test name>/ when the test failed, then closes the VM.
func StartT(tb TB, ctx context.Context, opts ...Option) *VM {
	tb.Helper()
	v, err := Start(ctx, append([]Option{WithLog(tbWriter{tb}), WithName(shortName(tb.Name()))}, opts...)...)
	if err != nil {
		tb.Fatalf("%v", err)
		return nil
	}
	closeWithT(tb, v)
	return v
}

// closeWithT registers StartT's cleanup for v: artifacts when tb failed, then Close.
func closeWithT(tb TB, v *VM) {
	tb.Cleanup(func() {
		if root := os.Getenv("ARTIFACTS"); root != "" && tb.Failed() {
			dir := ArtifactDir(root, tb.Name())
			if err := v.Artifacts(dir); err != nil {
				tb.Logf("%v", err)
			} else {
				tb.Logf("artifacts in %s", dir)
			}
		}
		if err := v.Close(); err != nil {
			tb.Logf("%v", err)
		}
	})
}

func shortName(name string) string {
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	if len(name) > 40 {
		name = name[:40]
	}
	return unsafeName.ReplaceAllString(name, "_")
}

type tbWriter struct{ tb TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
