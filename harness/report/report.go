// Package report turns the Ginkgo JSON reports of conformance runs (one `make e2e` per agent)
// into a command × agent matrix: for every command of the schema and every agent, whether the
// specs labelled cmd:<command> passed, failed, were skipped or do not apply to that agent, with
// each failure's message and location and a link to the spec's artifacts. WriteMarkdown and
// WriteHTML render it; Matrix.Failed says whether any agent failed a spec it had to pass.
//
// The states of one spec for one agent, from Ginkgo's SpecReport:
//
//	pass         the spec passed
//	fail         failed, panicked, timed out, was interrupted or aborted
//	unsupported  the spec called Skip() while running: it decided at run time that it does not
//	             apply to this agent (a behaviour where one agent deliberately deviates), and
//	             its message says why. Not a failure.
//	skip         the spec did not run: filtered out by LABELS, pending, or skipped after a
//	             --fail-fast stop. Not a failure, but not evidence either.
//	not run      the run produced no report, its suite setup failed before any spec ran, or
//	             Ginkgo skipped the spec because an earlier spec of its Ordered container (or
//	             its BeforeAll) failed. A failure.
//
// A command that no spec carries a cmd: label for is "no spec" in every column.
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/onsi/ginkgo/v2/types"

	"github.com/qgakit/qgakit/harness/vm"
)

// State is the outcome of one spec, or the summary of a command's specs, for one agent.
type State string

// The states; see the package documentation for what each one means.
const (
	Pass        State = "pass"
	Fail        State = "fail"
	Unsupported State = "unsupported"
	Skip        State = "skip"
	NotRun      State = "not run"
	NoSpec      State = "no spec"
)

// Run is one agent's conformance run.
type Run struct {
	// Agent is the agent binary as given (AGENTS=).
	Agent string `json:"agent"`
	// Slug names the agent's artifacts directory.
	Slug string `json:"slug"`
	// Version is the agent's version, and VersionSource how it was found.
	Version       string `json:"version,omitempty"`
	VersionSource string `json:"version_source,omitempty"`
	// Dir is the run's artifacts directory (report.json, junit.xml, per-spec directories).
	Dir string `json:"dir"`
	// Link is Dir relative to the rendered report's directory.
	Link string `json:"link"`
	// Problems are failures outside any spec: no report, a failed suite setup or teardown, a
	// failed ReportAfterSuite (the coverage check).
	Problems []Problem `json:"problems,omitempty"`
	// Duration is the suite's run time.
	Duration time.Duration `json:"duration"`
	// LabelFilter is the run's LABELS, when there was one: a partial run.
	LabelFilter string `json:"label_filter,omitempty"`
}

// Problem is a failure that belongs to no spec.
type Problem struct {
	What     string `json:"what"`
	Message  string `json:"message"`
	Location string `json:"location,omitempty"`
}

// Result is one spec's outcome for one agent.
type Result struct {
	State State `json:"state"`
	// Message is the failure's or the Skip's message.
	Message string `json:"message,omitempty"`
	// Location is where the failure happened (file:line).
	Location string `json:"location,omitempty"`
	// Artifacts is the spec's artifacts directory relative to the report's directory, when
	// it exists.
	Artifacts string        `json:"artifacts,omitempty"`
	RunTime   time.Duration `json:"run_time,omitempty"`
}

// Spec is one spec of the suite and its outcome for every run (Results[i] for Runs[i]).
type Spec struct {
	// Name is the spec's full text (containers and leaf).
	Name string `json:"name"`
	// Location is the spec's own location (file:line).
	Location string   `json:"location"`
	Commands []string `json:"commands"`
	Labels   []string `json:"labels,omitempty"`
	Results  []Result `json:"results"`
}

// Cell is one command's summary for one run.
type Cell struct {
	State State `json:"state"`
	// Counts of the command's specs by state.
	Counts map[State]int `json:"counts"`
}

// Command is one row of the matrix.
type Command struct {
	Name string `json:"name"`
	// Specs are indexes into Matrix.Specs.
	Specs []int  `json:"specs"`
	Cells []Cell `json:"cells"`
}

// Matrix is the whole report.
type Matrix struct {
	Generated time.Time `json:"generated"`
	Runs      []Run     `json:"runs"`
	Commands  []Command `json:"commands"`
	Specs     []Spec    `json:"specs"`
	// Other lists the specs (indexes) that carry no cmd: label.
	Other []int `json:"other,omitempty"`
}

// Input is one agent's run to read: its report file and its artifacts directory.
type Input struct {
	Run
	// ReportFile is Ginkgo's --json-report output.
	ReportFile string
}

// Build reads every input's JSON report and makes the matrix for commands (the schema's, in
// schema order). outDir is where the rendered report will live; artifact links are relative
// to it. A missing or unreadable report is a problem of that run, not an error: the other
// agents' results still count.
func Build(commands []string, inputs []Input, outDir string) *Matrix {
	m := &Matrix{Generated: time.Now()}
	specIdx := map[string]int{}
	ranSpecs := make([]bool, len(inputs)) // the run's report holds specs at all
	for ri, in := range inputs {
		run := in.Run
		run.Link = run.Slug
		if rel, err := filepath.Rel(outDir, run.Dir); err == nil {
			run.Link = filepath.ToSlash(rel)
		}
		reports, err := ReadReports(in.ReportFile)
		if err != nil {
			run.Problems = append(run.Problems, Problem{What: "no report", Message: err.Error()})
		}
		setupFailed := false
		for _, r := range reports {
			run.Duration += r.RunTime
			if r.SuiteConfig.LabelFilter != "" {
				run.LabelFilter = r.SuiteConfig.LabelFilter
			}
			if r.SpecialSuiteFailureReasons != nil && !r.SuiteSucceeded {
				for _, why := range r.SpecialSuiteFailureReasons {
					run.Problems = append(run.Problems, Problem{What: "suite", Message: why})
				}
			}
			for _, s := range r.SpecReports {
				if s.LeafNodeType != types.NodeTypeIt {
					if s.State.Is(types.SpecStateFailureStates) {
						if s.LeafNodeType.Is(types.NodeTypeBeforeSuite | types.NodeTypeSynchronizedBeforeSuite) {
							setupFailed = true
						}
						name := s.LeafNodeType.String()
						if s.LeafNodeText != "" {
							name += " " + strings.TrimSpace(s.LeafNodeText)
						}
						run.Problems = append(run.Problems, Problem{What: name, Message: s.Failure.Message,
							Location: location(s.Failure.Location)})
					}
				}
			}
		}
		seen := map[string]bool{}
		for _, r := range reports {
			for _, s := range r.SpecReports {
				if s.LeafNodeType != types.NodeTypeIt {
					continue
				}
				// Specs are matched across runs by their text, not their line: the tree may
				// change between two runs of a long matrix. Two specs of one run with the same
				// text are told apart by their location.
				key := s.FullText()
				if seen[key] {
					key += "\x00" + location(s.LeafNodeLocation)
				}
				seen[key] = true
				ranSpecs[ri] = true
				i, ok := specIdx[key]
				if !ok {
					i = len(m.Specs)
					specIdx[key] = i
					m.Specs = append(m.Specs, Spec{
						Name:     s.FullText(),
						Location: location(s.LeafNodeLocation),
						Commands: commandsOf(s),
						Labels:   s.Labels(),
						Results:  make([]Result, len(inputs)),
					})
				}
				m.Specs[i].Results[ri] = resultOf(s, setupFailed, in.Dir, outDir)
			}
		}
		m.Runs = append(m.Runs, run)
	}
	// A spec one run lacks: the run broke before its specs (a compile error), which is a
	// failure, or it ran a different tree (the specs changed between the runs), which says
	// nothing about the agent.
	for i := range m.Specs {
		for ri := range m.Specs[i].Results {
			if m.Specs[i].Results[ri].State != "" {
				continue
			}
			if ranSpecs[ri] {
				m.Specs[i].Results[ri] = Result{State: Skip,
					Message: "not in this run's suite: the specs changed between the runs"}
			} else {
				m.Specs[i].Results[ri] = Result{State: NotRun,
					Message: "the run broke before its specs ran (see its failures outside the specs)"}
			}
		}
	}
	sort.SliceStable(m.Specs, func(a, b int) bool { return m.Specs[a].Location < m.Specs[b].Location })
	for _, name := range commands {
		c := Command{Name: name, Cells: make([]Cell, len(inputs))}
		for i, s := range m.Specs {
			if slices.Contains(s.Commands, name) {
				c.Specs = append(c.Specs, i)
			}
		}
		for ri := range inputs {
			c.Cells[ri] = summarise(m.Specs, c.Specs, ri)
		}
		m.Commands = append(m.Commands, c)
	}
	for i, s := range m.Specs {
		if len(s.Commands) == 0 {
			m.Other = append(m.Other, i)
		}
	}
	return m
}

// WriteJSON writes the matrix as indented JSON, for tools.
func WriteJSON(w io.Writer, m *Matrix) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return fmt.Errorf("write conformance json: %w", err)
	}
	return nil
}

// ReadReports reads a Ginkgo JSON report file ([]types.Report).
func ReadReports(path string) ([]types.Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ginkgo report: %w", err)
	}
	var reports []types.Report
	if err := json.Unmarshal(b, &reports); err != nil {
		return nil, fmt.Errorf("parse ginkgo report %s: %w", path, err)
	}
	if len(reports) == 0 {
		return nil, errors.New("ginkgo report " + path + " holds no suite")
	}
	return reports, nil
}

func commandsOf(s types.SpecReport) []string {
	var cmds []string
	for _, l := range s.Labels() {
		if name, ok := strings.CutPrefix(l, "cmd:"); ok && !slices.Contains(cmds, name) {
			cmds = append(cmds, name)
		}
	}
	return cmds
}

func location(l types.CodeLocation) string {
	if l.FileName == "" {
		return ""
	}
	return fmt.Sprintf("%s:%d", filepath.Base(l.FileName), l.LineNumber)
}

func resultOf(s types.SpecReport, setupFailed bool, runDir, outDir string) Result {
	r := Result{RunTime: s.RunTime}
	switch {
	case s.State == types.SpecStatePassed:
		r.State = Pass
	case s.State.Is(types.SpecStateFailureStates):
		r.State = Fail
		r.Message = strings.TrimSpace(s.Failure.Message)
		if s.Failure.ForwardedPanic != "" {
			r.Message = strings.TrimSpace(r.Message + "\n" + s.Failure.ForwardedPanic)
		}
		r.Location = location(s.Failure.Location)
		if s.State != types.SpecStateFailed {
			r.Message = strings.TrimSpace(s.State.String() + ": " + r.Message)
		}
	case s.State == types.SpecStateSkipped && consequentialSkip(s.Failure.Message):
		// Ginkgo skipped it because something before it failed: it is part of that failure.
		r.State = NotRun
		r.Message = strings.TrimSpace(s.Failure.Message)
	case s.State == types.SpecStateSkipped && s.Failure.Message != "":
		// Skip() called by the spec itself (or its BeforeAll/BeforeEach): it does not apply
		// to this agent.
		r.State = Unsupported
		r.Message = strings.TrimSpace(s.Failure.Message)
		r.Location = location(s.Failure.Location)
	case setupFailed:
		r.State = NotRun
		r.Message = "the suite's setup failed"
	default:
		r.State = Skip
		if s.State == types.SpecStatePending {
			r.Message = "pending"
		}
	}
	if r.State == Fail && runDir != "" {
		dir := vm.ArtifactDir(runDir, s.FullText())
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			if rel, err := filepath.Rel(outDir, dir); err == nil {
				r.Artifacts = filepath.ToSlash(rel) + "/"
			} else {
				r.Artifacts = dir + "/"
			}
		}
	}
	return r
}

// consequentialSkip recognises the messages Ginkgo gives the specs it skips after a failure
// (internal/group.go): the rest of an Ordered container after a failed spec or BeforeAll.
// Skips with any other message were asked for, by Skip().
func consequentialSkip(msg string) bool {
	return strings.HasPrefix(msg, "Spec skipped because an earlier spec in an ordered container failed") ||
		strings.HasPrefix(msg, "Spec skipped because a BeforeAll node failed")
}

// summarise folds a command's specs for one run into a cell: a failure (or a spec that did
// not run) wins, then a pass; a command whose run specs all said unsupported is unsupported;
// one whose specs all were filtered out is skip.
func summarise(specs []Spec, idx []int, run int) Cell {
	c := Cell{Counts: map[State]int{}}
	if len(idx) == 0 {
		c.State = NoSpec
		return c
	}
	for _, i := range idx {
		c.Counts[specs[i].Results[run].State]++
	}
	for _, s := range []State{Fail, NotRun, Pass, Unsupported, Skip} {
		if c.Counts[s] > 0 {
			c.State = s
			return c
		}
	}
	c.State = Skip
	return c
}

// Failed says whether any agent failed a spec it was expected to pass, did not run specs it
// should have run, or had a failure outside the specs.
func (m *Matrix) Failed() bool {
	for _, r := range m.Runs {
		if len(r.Problems) > 0 {
			return true
		}
	}
	for _, s := range m.Specs {
		for _, r := range s.Results {
			if r.State == Fail || r.State == NotRun {
				return true
			}
		}
	}
	return false
}

// Failures lists every failing (or not run) spec result, by run, for the summaries.
func (m *Matrix) Failures(run int) []int {
	var out []int
	for i, s := range m.Specs {
		if st := s.Results[run].State; st == Fail || st == NotRun {
			out = append(out, i)
		}
	}
	return out
}

// Slug makes an artifacts directory name from an agent path: bin/qga -> bin-qga,
// /usr/sbin/qemu-ga -> usr-sbin-qemu-ga, ./bin/qga -> bin-qga. The Makefile computes the same
// for the paths people type.
func Slug(agent string) string {
	s := strings.Trim(filepath.ToSlash(filepath.Clean(agent)), "/.")
	s = strings.ReplaceAll(s, "/", "-")
	if s == "" {
		return "agent"
	}
	return s
}
