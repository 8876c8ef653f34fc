package report

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Legend explains the states; both renderings print it.
const Legend = "pass: every spec that ran passed · fail: at least one spec failed · " +
	"unsupported: the specs that ran called Skip() because they do not apply to this agent (the reason is listed) · " +
	"skip: not run (filtered out by LABELS, or pending) · not run: no report, the suite setup failed, " +
	"or Ginkgo skipped it after a failure earlier in its Ordered container · " +
	"no spec: no spec carries cmd:<command>"

// CellText is a cell for a terminal and for GitHub: the state, and the counts that matter.
func CellText(c Cell) string {
	total := 0
	for _, n := range c.Counts {
		total += n
	}
	switch c.State {
	case NoSpec:
		return "no spec"
	case Fail:
		return fmt.Sprintf("**FAIL** %d of %d", c.Counts[Fail], total)
	case NotRun:
		return fmt.Sprintf("**NOT RUN** %d of %d", c.Counts[NotRun], total)
	case Pass:
		s := fmt.Sprintf("pass %d", c.Counts[Pass])
		var extra []string
		if n := c.Counts[Unsupported]; n > 0 {
			extra = append(extra, fmt.Sprintf("%d unsupported", n))
		}
		if n := c.Counts[Skip]; n > 0 {
			extra = append(extra, fmt.Sprintf("%d skipped", n))
		}
		if len(extra) > 0 {
			s += " (" + strings.Join(extra, ", ") + ")"
		}
		return s
	case Unsupported:
		return fmt.Sprintf("unsupported %d", c.Counts[Unsupported])
	default:
		return fmt.Sprintf("skip %d", c.Counts[Skip])
	}
}

// WriteMarkdown renders the matrix as Markdown that reads well in a terminal too.
func WriteMarkdown(w io.Writer, m *Matrix) error {
	p := &printer{w: w}
	p.f("# qgakit conformance\n\n")
	if m.Failed() {
		p.f("**Result: FAIL** — an agent failed a spec it must pass, or a run broke (details below).\n\n")
	} else {
		p.f("**Result: PASS** — every agent passed every spec that applies to it.\n\n")
	}
	p.f("| agent | version | specs | suite time | artifacts |\n|---|---|---|---|---|\n")
	for ri, r := range m.Runs {
		p.f("| `%s` | %s | %s | %s | [%s/](%s/) |\n", r.Agent, versionText(r), md(m.runCounts(ri)),
			r.Duration.Round(time.Second), r.Link, r.Link)
	}
	for _, r := range m.Runs {
		if r.LabelFilter != "" {
			p.f("\nPartial run of `%s`: LABELS=`%s`.\n", r.Agent, r.LabelFilter)
		}
	}
	p.f("\n## Commands\n\n")
	p.agentsHeader("command", m.Runs)
	for _, c := range m.Commands {
		p.f("| %s |", c.Name)
		for _, cell := range c.Cells {
			p.f(" %s |", CellText(cell))
		}
		p.f("\n")
	}
	p.f("\n%s.\n", Legend)

	for ri, r := range m.Runs {
		fails := m.Failures(ri)
		if len(fails) == 0 && len(r.Problems) == 0 {
			continue
		}
		p.f("\n## Failures of `%s`\n\n", r.Agent)
		for _, pr := range r.Problems {
			p.f("- **%s** %s\n", pr.What, locText(pr.Location))
			p.quote(pr.Message)
		}
		for _, i := range fails {
			s := m.Specs[i]
			res := s.Results[ri]
			p.f("- **%s** (%s; %s) — %s %s\n", s.Name, s.Location, strings.Join(s.Commands, ", "), res.State, locText(res.Location))
			p.quote(res.Message)
			if res.Artifacts != "" {
				p.f("  - artifacts: [%s](%s)\n", res.Artifacts, res.Artifacts)
			}
		}
	}
	var unsup []string
	for _, s := range m.Specs {
		for ri, res := range s.Results {
			if res.State == Unsupported {
				unsup = append(unsup, fmt.Sprintf("- `%s`: %s — %s\n", m.Runs[ri].Agent, s.Name, oneLine(res.Message)))
			}
		}
	}
	if len(unsup) > 0 {
		p.f("\n## Unsupported (the spec skipped itself for this agent)\n\n%s", strings.Join(unsup, ""))
	}
	if len(m.Other) > 0 {
		p.f("\n## Specs without a cmd: label\n\n")
		p.agentsHeader("spec", m.Runs)
		for _, i := range m.Other {
			p.f("| %s |", md(m.Specs[i].Name))
			for _, res := range m.Specs[i].Results {
				p.f(" %s |", res.State)
			}
			p.f("\n")
		}
	}
	p.f("\nGenerated %s by harness/cmd/conformance from each run's Ginkgo JSON report (`<artifacts>/<agent>/report.json`).\n",
		m.Generated.UTC().Format("2006-01-02 15:04 UTC"))
	return p.err
}

// runCounts says how many specs of a run are in each state.
func (m *Matrix) runCounts(run int) string {
	counts := map[State]int{}
	for _, s := range m.Specs {
		counts[s.Results[run].State]++
	}
	var parts []string
	for _, st := range []State{Pass, Fail, NotRun, Unsupported, Skip} {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func versionText(r Run) string {
	if r.Version == "" {
		return "unknown"
	}
	if r.VersionSource != "" {
		return fmt.Sprintf("%s (%s)", r.Version, r.VersionSource)
	}
	return r.Version
}

func locText(l string) string {
	if l == "" {
		return ""
	}
	return "at " + l
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	return s
}

// md escapes what would break a table cell.
func md(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, a ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, a...)
	}
}

// agentsHeader prints the header of a table with a first column and then one per run's agent.
func (p *printer) agentsHeader(first string, runs []Run) {
	p.f("| %s |", first)
	for _, r := range runs {
		p.f(" `%s` |", r.Agent)
	}
	p.f("\n|---|%s\n", strings.Repeat("---|", len(runs)))
}

// quote prints a message as an indented code block, at most 20 lines of it.
func (p *printer) quote(msg string) {
	msg = strings.TrimSpace(msg)
	if msg == "" {
		return
	}
	lines := strings.Split(msg, "\n")
	if len(lines) > 20 {
		lines = append(lines[:20], fmt.Sprintf("… (%d more lines)", len(lines)-20))
	}
	p.f("\n  ```\n")
	for _, l := range lines {
		p.f("  %s\n", l)
	}
	p.f("  ```\n\n")
}
