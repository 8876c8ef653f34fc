package diff

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// WriteFiles writes the run's report to dir/<base>.md and dir/<base>.json.
func WriteFiles(r *Result, dir, base string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("diff report: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("diff report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, base+".json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("diff report: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, base+".md"))
	if err != nil {
		return fmt.Errorf("diff report: %w", err)
	}
	if err := WriteMarkdown(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("diff report: %w", err)
	}
	return nil
}

// WriteMarkdown writes the report for people: the verdict first, then each difference with
// the request and both agents' replies, then every entry's verdict.
func WriteMarkdown(w io.Writer, r *Result) error {
	p := &mdWriter{w: w}
	p.f("# Differential run (%s mode)\n\n", r.Mode)
	p.f("| agent | binary | guest-info version |\n|---|---|---|\n")
	p.f("| A | `%s` | %s |\n| B | `%s` | %s |\n\n", r.A.Bin, r.A.Version, r.B.Bin, r.B.Version)
	s := r.Summary
	p.f("Ran %d of %d entries (%d skipped) in %s: %d answered the same.\n\n", s.Ran, s.Entries, s.Skipped, r.Duration, s.Same)
	p.f("| class differences | value differences | desc differences | documented differences |\n|---|---|---|---|\n| %d | %d | %d | %d |\n\n",
		s.Class, s.Value, s.Desc, s.Documented)
	if r.Failed() {
		p.f("**Result: FAIL** — %d class and %d value differences are not documented in corpus/documented.json.\n\n", s.Class, s.Value)
	} else {
		p.f("**Result: PASS** — no class or value difference beyond the documented ones.\n\n")
	}
	p.f("Replies are compared after normalisation (harness/diff: times, handles, key order, the version, ")
	p.f("per-run counters, each agent's scratch directory written `${tmp}`). A *class* difference is a different ")
	p.f("number or kind of replies (return, error class, 0xFF delimiter, not JSON); a *value* difference a different ")
	p.f("return value or id; a *desc* difference a different error text.\n\n")

	sections := []struct {
		title string
		keep  func(Difference) bool
	}{
		{"Class and value differences", func(d Difference) bool { return d.Documented == "" && d.Kind != KindDesc }},
		{"Desc differences (reported, not fatal)", func(d Difference) bool { return d.Documented == "" && d.Kind == KindDesc }},
		{"Documented differences", func(d Difference) bool { return d.Documented != "" }},
	}
	for _, sec := range sections {
		var list []EntryResult
		for _, e := range r.Entries {
			for _, d := range e.Diffs {
				if sec.keep(d) {
					list = append(list, e)
					break
				}
			}
		}
		p.f("## %s (%d entries)\n\n", sec.title, len(list))
		if len(list) == 0 {
			p.f("None.\n\n")
		}
		for _, e := range list {
			p.entry(e, sec.keep)
		}
	}
	p.f("## Every entry\n\n| entry | command | verdict |\n|---|---|---|\n")
	for _, e := range r.Entries {
		p.f("| `%s` | %s | %s |\n", e.ID, e.Cmd, cell(verdict(e)))
	}
	return p.err
}

type mdWriter struct {
	w   io.Writer
	err error
}

func (p *mdWriter) f(format string, a ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, a...)
	}
}

func (p *mdWriter) entry(e EntryResult, keep func(Difference) bool) {
	title := e.ID
	if e.Cmd != "" {
		title += " (" + e.Cmd + ")"
	}
	p.f("### %s\n\n", title)
	if e.Note != "" {
		p.f("%s\n\n", e.Note)
	}
	var reasons []string
	for _, d := range e.Diffs {
		if !keep(d) {
			continue
		}
		p.f("- **%s**: %s\n", d.Kind, d.What)
		if d.Documented != "" && !slices.Contains(reasons, d.Documented) {
			reasons = append(reasons, d.Documented)
		}
	}
	for _, r := range reasons {
		p.f("\n> documented: %s\n", r)
	}
	p.f("\nsent:\n\n```\n%s\n```\n\n", e.Sent)
	for _, side := range []struct {
		name string
		o    *Outcome
	}{{"A", e.A}, {"B", e.B}} {
		p.f("%s replied:\n\n```\n", side.name)
		if side.o != nil {
			// Runs of the same line (one parse error per bracket) are shown once with a count.
			for i := 0; i < len(side.o.Replies); {
				j := i
				for j < len(side.o.Replies) && side.o.Replies[j].Raw == side.o.Replies[i].Raw {
					j++
				}
				if j-i > 2 {
					p.f("%s   (×%d)\n", side.o.Replies[i].Raw, j-i)
				} else {
					for k := i; k < j; k++ {
						p.f("%s\n", side.o.Replies[k].Raw)
					}
				}
				i = j
			}
			if len(side.o.Replies) == 0 {
				p.f("(nothing)\n")
			}
			if side.o.Problem != "" {
				p.f("(%s)\n", side.o.Problem)
			}
		}
		p.f("```\n\n")
	}
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
