// Command conformance turns the Ginkgo JSON reports of `make e2e` runs, one per agent, into the
// command × agent report (harness/report): <out>/conformance.md, conformance.html and
// conformance.json. `make conformance` runs the suite for each agent of AGENTS and then this:
//
//	conformance [-out _artifacts] AGENT[=DIR] ...
//
// DIR is the agent's artifacts directory holding report.json (default <out>/<slug of AGENT>).
// Each agent's version is what guest-info reports when the binary runs on the host in
// unix-listen mode for a moment: DIR/agent when it exists (the copy `make conformance` tested),
// AGENT otherwise; when that fails, the first line of its -V output. It exits 1 when any agent failed a spec it must pass (or
// its run broke), 2 when the report could not be written.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/qgakit/qgakit/harness/diff"
	"github.com/qgakit/qgakit/harness/report"
	"github.com/qgakit/qgakit/schema"
)

func main() {
	os.Exit(run())
}

func run() int {
	out := flag.String("out", "_artifacts", "where the runs' directories are and the report goes")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [-out DIR] AGENT[=ARTIFACTS_DIR] ...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		return 2
	}
	var inputs []report.Input
	for _, arg := range flag.Args() {
		agent, dir, ok := strings.Cut(arg, "=")
		if !ok {
			dir = filepath.Join(*out, report.Slug(agent))
		}
		// make conformance tests a copy taken at the start of the run: ask that one.
		bin := agent
		if st, err := os.Stat(filepath.Join(dir, "agent")); err == nil && st.Mode().IsRegular() {
			bin = filepath.Join(dir, "agent")
		}
		version, source := agentVersion(bin)
		inputs = append(inputs, report.Input{
			Run: report.Run{Agent: agent, Slug: filepath.Base(dir), Dir: dir,
				Version: version, VersionSource: source},
			ReportFile: filepath.Join(dir, "report.json"),
		})
	}
	m := report.Build(schema.MustLoad().CommandNames(), inputs, *out)
	if err := write(m, *out); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: %v\n", err)
		return 2
	}
	fmt.Printf("\n%-32s", "command")
	for _, r := range m.Runs {
		fmt.Printf(" %-26s", r.Agent)
	}
	fmt.Println()
	for _, c := range m.Commands {
		fmt.Printf("%-32s", c.Name)
		for _, cell := range c.Cells {
			fmt.Printf(" %-26s", strings.ReplaceAll(report.CellText(cell), "**", ""))
		}
		fmt.Println()
	}
	for _, r := range m.Runs {
		fmt.Printf("%s: version %s (%s)\n", r.Agent, r.Version, r.VersionSource)
		for _, p := range r.Problems {
			fmt.Printf("  problem: %s: %s\n", p.What, firstLine(p.Message))
		}
	}
	fmt.Printf("report: %s, %s\n", filepath.Join(*out, "conformance.md"), filepath.Join(*out, "conformance.html"))
	if m.Failed() {
		fmt.Println("FAIL: an agent failed a spec it must pass, or its run broke (see the report)")
		return 1
	}
	return 0
}

func write(m *report.Matrix, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name   string
		render func(*os.File) error
	}{
		{"conformance.md", func(f *os.File) error { return report.WriteMarkdown(f, m) }},
		{"conformance.html", func(f *os.File) error { return report.WriteHTML(f, m) }},
		{"conformance.json", func(f *os.File) error { return report.WriteJSON(f, m) }},
	} {
		file, err := os.Create(filepath.Join(out, f.name))
		if err != nil {
			return err
		}
		if err := f.render(file); err != nil {
			file.Close()
			return fmt.Errorf("%s: %w", f.name, err)
		}
		if err := file.Close(); err != nil {
			return err
		}
	}
	return nil
}

// agentVersion asks the agent itself: guest-info over unix-listen on the host, the version
// the suite's guest-info sees too; -V when the binary cannot serve on the host.
func agentVersion(agent string) (version, source string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "conformance-version-")
	if err == nil {
		defer os.RemoveAll(dir)
		h, err := diff.StartHost(ctx, "agent", agent, dir)
		if err == nil {
			var gi struct {
				Version string `json:"version"`
			}
			cerr := h.Target.Client.Call(ctx, "guest-info", nil, &gi)
			h.Close()
			if cerr == nil && gi.Version != "" {
				return gi.Version, "guest-info, run on the host"
			}
		}
	}
	b, err := exec.CommandContext(ctx, agent, "-V").CombinedOutput()
	if err != nil {
		return "", ""
	}
	return firstLine(string(b)), "-V"
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
