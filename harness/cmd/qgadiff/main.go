// Command qgadiff sends the request corpus to two agents and reports how their replies
// differ (harness/diff). `make diff-host` runs it on the host, `make diff` in a tiny VM:
//
//	qgadiff -mode host -a bin/qga -b /usr/sbin/qemu-ga [-corpus corpus] [-out _artifacts]
//
// It writes <out>/<name>.md and <out>/<name>.json (name: diff for vm mode, diff-host for host
// mode) and exits 1 when there are class or value differences that corpus/documented.json does
// not accept, 2 when the run itself failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/qgakit/qgakit/harness/diff"
)

func main() {
	os.Exit(run())
}

func run() int {
	a := flag.String("a", "bin/qga", "agent A (the one under test)")
	b := flag.String("b", "/usr/sbin/qemu-ga", "agent B (usually the reference)")
	mode := flag.String("mode", "host", "host (unix-listen on this machine) or vm (one tiny VM, two ports)")
	corpus := flag.String("corpus", "corpus", "the corpus directory (requests/*.json, documented.json)")
	out := flag.String("out", "_artifacts", "where the report goes")
	name := flag.String("name", "", "report file name without extension (default diff for vm, diff-host for host)")
	timeout := flag.Duration("timeout", 0, "bound on the whole run (default 5m host, 20m vm)")
	quiet := flag.Bool("q", false, "no per-entry progress")
	flag.Parse()

	m := diff.Mode(*mode)
	if m != diff.ModeHost && m != diff.ModeVM {
		fmt.Fprintf(os.Stderr, "qgadiff: -mode %q: want host or vm\n", *mode)
		return 2
	}
	if *name == "" {
		*name = "diff"
		if m == diff.ModeHost {
			*name = "diff-host"
		}
	}
	if *timeout == 0 {
		*timeout = 5 * time.Minute
		if m == diff.ModeVM {
			*timeout = 20 * time.Minute
		}
	}
	c, err := diff.Load(*corpus)
	if err != nil {
		fmt.Fprintf(os.Stderr, "qgadiff: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	opts := diff.Options{}
	if !*quiet {
		opts.Progress = func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	}
	var res *diff.Result
	switch m {
	case diff.ModeHost:
		res, err = runHost(ctx, c, *a, *b, opts)
	case diff.ModeVM:
		opts.EntryTimeout = 30 * time.Second
		res, err = runVM(ctx, c, *a, *b, filepath.Join(*out, *name), opts)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "qgadiff: %v\n", err)
		return 2
	}
	if err := diff.WriteFiles(res, *out, *name); err != nil {
		fmt.Fprintf(os.Stderr, "qgadiff: %v\n", err)
		return 2
	}
	s := res.Summary
	fmt.Printf("\nqgadiff %s: A=%s (%s) B=%s (%s)\n", m, res.A.Bin, res.A.Version, res.B.Bin, res.B.Version)
	fmt.Printf("%d of %d entries ran (%d skipped), %d the same; differences: class %d, value %d, desc %d, documented %d\n",
		s.Ran, s.Entries, s.Skipped, s.Same, s.Class, s.Value, s.Desc, s.Documented)
	fmt.Printf("report: %s.md, %s.json\n", filepath.Join(*out, *name), filepath.Join(*out, *name))
	if res.Failed() {
		fmt.Println("FAIL: class or value differences that corpus/documented.json does not accept")
		return 1
	}
	return 0
}

func runHost(ctx context.Context, c *diff.Corpus, a, b string, opts diff.Options) (*diff.Result, error) {
	dir, err := os.MkdirTemp("", "qgadiff-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ha, err := diff.StartHost(ctx, "A", a, filepath.Join(dir, "a"))
	if err != nil {
		return nil, err
	}
	defer ha.Close()
	hb, err := diff.StartHost(ctx, "B", b, filepath.Join(dir, "b"))
	if err != nil {
		return nil, err
	}
	defer hb.Close()
	return diff.Run(ctx, c, diff.ModeHost, ha.Target, hb.Target, opts)
}

// runVM boots one tiny VM with both agents. The VM's artifacts (serial log, QMP, console and
// both agents' transcripts) go to artifacts/ whatever the outcome: a difference is easier to
// understand with the exchange at hand.
func runVM(ctx context.Context, c *diff.Corpus, a, b, artifacts string, opts diff.Options) (*diff.Result, error) {
	fmt.Println("qgadiff: booting a tiny VM with both agents (the image is cached after its first build)")
	p, err := diff.StartVM(ctx, a, b, nil)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	res, err := diff.Run(ctx, c, diff.ModeVM, p.A, p.B, opts)
	if aerr := p.Artifacts(artifacts); aerr != nil {
		fmt.Fprintf(os.Stderr, "qgadiff: %v\n", aerr)
	} else {
		fmt.Printf("qgadiff: VM artifacts in %s\n", artifacts)
	}
	return res, err
}
