package report

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2/types"

	"github.com/qgakit/qgakit/harness/vm"
)

// The hand-made reports below are what Ginkgo writes with --json-report, built from its own
// types and written with its own JSON marshalling, so the reader sees the real format.

var commands = []string{"guest-sync", "guest-ping", "guest-info", "guest-shutdown", "guest-fstrim"}

func loc(file string, line int) types.CodeLocation {
	return types.CodeLocation{FileName: "/src/specs/" + file, LineNumber: line}
}

func it(container, text string, line int, state types.SpecState, labels ...string) types.SpecReport {
	return types.SpecReport{
		ContainerHierarchyTexts:  []string{container},
		ContainerHierarchyLabels: [][]string{nil},
		LeafNodeType:             types.NodeTypeIt,
		LeafNodeText:             text,
		LeafNodeLocation:         loc("x_test.go", line),
		LeafNodeLabels:           labels,
		State:                    state,
		RunTime:                  time.Second,
	}
}

func failed(s types.SpecReport, msg string, line int) types.SpecReport {
	s.Failure = types.Failure{Message: msg, Location: loc("x_test.go", line), FailureNodeType: types.NodeTypeIt}
	return s
}

func skippedBySpec(s types.SpecReport, msg string) types.SpecReport {
	s.Failure = types.Failure{Message: msg, Location: loc("x_test.go", 99), FailureNodeType: types.NodeTypeIt}
	return s
}

func suiteReport(specs ...types.SpecReport) types.Report {
	return types.Report{
		SuitePath:        "/src/specs",
		SuiteDescription: "qgakit conformance",
		SuiteSucceeded:   true,
		RunTime:          90 * time.Second,
		SpecReports:      specs,
	}
}

func writeReport(t *testing.T, dir string, r types.Report) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal([]types.Report{r})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "report.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// twoRuns builds the report of two agents: ours passes everything that runs (one spec skips
// itself, one is filtered out); the reference fails one spec and its coverage check.
func twoRuns(t *testing.T) (*Matrix, string) {
	t.Helper()
	out := t.TempDir()
	ping := it("guest-ping", "answers", 10, types.SpecStatePassed, "cmd:guest-ping")
	syncPing := it("protocol", "syncs then pings", 20, types.SpecStatePassed, "cmd:guest-sync", "cmd:guest-ping")
	s3 := it("guest-shutdown", "refuses S3 without deep", 30, types.SpecStatePassed, "cmd:guest-shutdown")
	info := it("guest-info", "lists commands", 40, types.SpecStateSkipped, "cmd:guest-info") // filtered out
	plain := it("misc", "has no command label", 50, types.SpecStatePassed)

	oursDir := filepath.Join(out, "bin-qga")
	ours := writeReport(t, oursDir, suiteReport(ping, syncPing, s3, info, plain))

	refDir := filepath.Join(out, "usr-sbin-qemu-ga")
	refFail := failed(syncPing, "Expected\n    <int>: 1\nto equal\n    <int>: 2", 25)
	refFail.State = types.SpecStateFailed
	refS3 := skippedBySpec(s3, "the reference freezes the guest here: ours only")
	refS3.State = types.SpecStateSkipped
	coverage := types.SpecReport{LeafNodeType: types.NodeTypeReportAfterSuite, LeafNodeText: "command coverage",
		State: types.SpecStateFailed, Failure: types.Failure{Message: "commands that must have specs have none: guest-fstrim",
			Location: loc("coverage_test.go", 45)}}
	refReport := suiteReport(ping, refFail, refS3, info, plain, coverage)
	refReport.SuiteSucceeded = false
	ref := writeReport(t, refDir, refReport)
	// The failed spec's artifacts, where vm.StartT puts them.
	if err := os.MkdirAll(vm.ArtifactDir(refDir, refFail.FullText()), 0o755); err != nil {
		t.Fatal(err)
	}
	m := Build(commands, []Input{
		{Run: Run{Agent: "bin/qga", Slug: "bin-qga", Dir: oursDir, Version: "1.0"}, ReportFile: ours},
		{Run: Run{Agent: "/usr/sbin/qemu-ga", Slug: "usr-sbin-qemu-ga", Dir: refDir, Version: "7.2.22"}, ReportFile: ref},
	}, out)
	return m, out
}

func cellOf(t *testing.T, m *Matrix, cmd string, run int) Cell {
	t.Helper()
	for _, c := range m.Commands {
		if c.Name == cmd {
			return c.Cells[run]
		}
	}
	t.Fatalf("no row for %s", cmd)
	return Cell{}
}

func TestMatrixStates(t *testing.T) {
	m, _ := twoRuns(t)
	want := map[string][2]State{
		"guest-sync":     {Pass, Fail},
		"guest-ping":     {Pass, Fail}, // one of its two specs failed for the reference
		"guest-info":     {Skip, Skip},
		"guest-shutdown": {Pass, Unsupported},
		"guest-fstrim":   {NoSpec, NoSpec},
	}
	for cmd, states := range want {
		for run, st := range states {
			if got := cellOf(t, m, cmd, run).State; got != st {
				t.Errorf("%s, run %d: %s, want %s", cmd, run, got, st)
			}
		}
	}
	if c := cellOf(t, m, "guest-ping", 1); c.Counts[Pass] != 1 || c.Counts[Fail] != 1 {
		t.Errorf("guest-ping reference counts %v, want 1 pass and 1 fail", c.Counts)
	}
	if got := len(m.Commands); got != len(commands) {
		t.Errorf("%d rows, want one per command (%d), in the order given", got, len(commands))
	}
	for i, c := range m.Commands {
		if c.Name != commands[i] {
			t.Errorf("row %d is %s, want %s", i, c.Name, commands[i])
		}
	}
	if len(m.Other) != 1 || m.Specs[m.Other[0]].Name != "misc has no command label" {
		t.Errorf("specs without cmd: labels = %v, want the misc spec only", m.Other)
	}
	if !m.Failed() {
		t.Error("Failed() is false although the reference failed a spec")
	}
}

func TestFailureDetails(t *testing.T) {
	m, _ := twoRuns(t)
	fails := m.Failures(1)
	if len(fails) != 1 {
		t.Fatalf("reference failures %v, want exactly the protocol spec", fails)
	}
	s := m.Specs[fails[0]]
	r := s.Results[1]
	if s.Name != "protocol syncs then pings" || r.State != Fail {
		t.Fatalf("failure is %q %s", s.Name, r.State)
	}
	if !strings.Contains(r.Message, "to equal") || r.Location != "x_test.go:25" {
		t.Errorf("failure message %q at %q, want Gomega's text at x_test.go:25", r.Message, r.Location)
	}
	if want := "usr-sbin-qemu-ga/protocol_syncs_then_pings/"; r.Artifacts != want {
		t.Errorf("artifacts link %q, want %q (relative to the report)", r.Artifacts, want)
	}
	if got := m.Failures(0); len(got) != 0 {
		t.Errorf("ours has failures %v, want none", got)
	}
	probs := m.Runs[1].Problems
	if len(probs) != 1 || !strings.Contains(probs[0].Message, "guest-fstrim") || probs[0].Location != "coverage_test.go:45" {
		t.Errorf("reference problems %+v, want the coverage failure", probs)
	}
	var unsup Result
	for _, sp := range m.Specs {
		if sp.Results[1].State == Unsupported {
			unsup = sp.Results[1]
		}
	}
	if !strings.Contains(unsup.Message, "ours only") {
		t.Errorf("unsupported result %+v, want the Skip message", unsup)
	}
}

func TestAllPassIsNotFailed(t *testing.T) {
	out := t.TempDir()
	dir := filepath.Join(out, "a")
	path := writeReport(t, dir, suiteReport(
		it("guest-ping", "answers", 10, types.SpecStatePassed, "cmd:guest-ping"),
		skippedBySpec(it("guest-sync", "ours only", 11, types.SpecStateSkipped, "cmd:guest-sync"), "reference bug"),
	))
	m := Build(commands, []Input{{Run: Run{Agent: "a", Slug: "a", Dir: dir}, ReportFile: path}}, out)
	if m.Failed() {
		t.Errorf("Failed() with only passes and an unsupported spec: %+v", m.Runs)
	}
	if got := cellOf(t, m, "guest-sync", 0).State; got != Unsupported {
		t.Errorf("guest-sync %s, want unsupported", got)
	}
}

func TestMissingReportAndFailedSetup(t *testing.T) {
	out := t.TempDir()
	okDir := filepath.Join(out, "ok")
	ok := writeReport(t, okDir, suiteReport(it("guest-ping", "answers", 10, types.SpecStatePassed, "cmd:guest-ping")))

	brokenDir := filepath.Join(out, "broken")
	setup := types.SpecReport{LeafNodeType: types.NodeTypeSynchronizedBeforeSuite, State: types.SpecStateFailed,
		Failure: types.Failure{Message: "AGENT=/nope: no such file", Location: loc("suite_test.go", 70)}}
	notRun := it("guest-ping", "answers", 10, types.SpecStateSkipped, "cmd:guest-ping")
	rep := suiteReport(setup, notRun)
	rep.SuiteSucceeded = false
	broken := writeReport(t, brokenDir, rep)

	m := Build(commands, []Input{
		{Run: Run{Agent: "ok", Slug: "ok", Dir: okDir}, ReportFile: ok},
		{Run: Run{Agent: "broken", Slug: "broken", Dir: brokenDir}, ReportFile: broken},
		{Run: Run{Agent: "absent", Slug: "absent", Dir: filepath.Join(out, "absent")}, ReportFile: filepath.Join(out, "absent", "report.json")},
	}, out)
	if !m.Failed() {
		t.Fatal("Failed() is false with a failed setup and a missing report")
	}
	if got := cellOf(t, m, "guest-ping", 0).State; got != Pass {
		t.Errorf("the good run's cell is %s, want pass", got)
	}
	if got := cellOf(t, m, "guest-ping", 1).State; got != NotRun {
		t.Errorf("after a failed setup the cell is %s, want not run (not skip)", got)
	}
	if got := cellOf(t, m, "guest-ping", 2).State; got != NotRun {
		t.Errorf("without a report the cell is %s, want not run", got)
	}
	if msg := m.Specs[0].Results[2].Message; !strings.Contains(msg, "broke before its specs ran") {
		t.Errorf("a spec of the run without a report says %q", msg)
	}
	if p := m.Runs[1].Problems; len(p) != 1 || !strings.Contains(p[0].Message, "AGENT=/nope") {
		t.Errorf("setup problem %+v", p)
	}
	if p := m.Runs[2].Problems; len(p) != 1 || p[0].What != "no report" {
		t.Errorf("missing report problem %+v", p)
	}
}

func TestMarkdown(t *testing.T) {
	m, _ := twoRuns(t)
	var buf bytes.Buffer
	if err := WriteMarkdown(&buf, m); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		"**Result: FAIL**",
		"| guest-ping | pass 2 | **FAIL** 1 of 2 |",
		"| guest-shutdown | pass 1 | unsupported 1 |",
		"| guest-fstrim | no spec | no spec |",
		"| guest-info | skip 1 | skip 1 |",
		"| `/usr/sbin/qemu-ga` | 7.2.22 |",
		"## Failures of `/usr/sbin/qemu-ga`",
		"- **protocol syncs then pings** (x_test.go:20; guest-sync, guest-ping) — fail at x_test.go:25",
		"[usr-sbin-qemu-ga/protocol_syncs_then_pings/](usr-sbin-qemu-ga/protocol_syncs_then_pings/)",
		"commands that must have specs have none: guest-fstrim",
		"the reference freezes the guest here: ours only",
		// Both tables have a column per agent.
		"## Commands\n\n| command | `bin/qga` | `/usr/sbin/qemu-ga` |\n|---|---|---|\n| guest-sync |",
		"## Specs without a cmd: label\n\n| spec | `bin/qga` | `/usr/sbin/qemu-ga` |\n|---|---|---|\n| misc has no command label |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "## Failures of `bin/qga`") {
		t.Error("markdown lists failures for the agent that had none")
	}
}

func TestHTMLIsSelfContained(t *testing.T) {
	m, _ := twoRuns(t)
	var buf bytes.Buffer
	if err := WriteHTML(&buf, m); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, bad := range []string{"<script", "<link", "src=", "http://", "https://", "@import"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page is not self-contained: it has %q", bad)
		}
	}
	// The matrix row: one coloured cell per agent.
	row := regexp.MustCompile(`(?s)<tr><td><a href="#cmd-guest-ping">guest-ping</a></td><td class="state pass">pass 2</td><td class="state fail">FAIL 1 of 2</td></tr>`)
	if !row.MatchString(page) {
		t.Errorf("no coloured guest-ping row in:\n%s", page)
	}
	for _, want := range []string{
		`<details id="cmd-guest-ping" open>`,                 // a failing command opens by itself
		`<details id="cmd-guest-info">`,                      // the others stay closed
		`<b>7.2.22</b>`,                                      // the version
		`href="usr-sbin-qemu-ga/protocol_syncs_then_pings/"`, // the artifacts link
		"No spec carries <code>cmd:guest-fstrim</code>",
		"&lt;int&gt;: 1", // the message, escaped
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}

func TestReadReportsRefusesGarbage(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "report.json")
	for _, content := range []string{"", "{", "[]"} {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadReports(p); err == nil {
			t.Errorf("ReadReports(%q) succeeded", content)
		}
	}
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"bin/qga":           "bin-qga",
		"/usr/sbin/qemu-ga": "usr-sbin-qemu-ga",
		"./bin/qga":         "bin-qga",
		"qemu-ga":           "qemu-ga",
	} {
		if got := Slug(in); got != want {
			t.Errorf("Slug(%q) = %q, want %q", in, got, want)
		}
	}
}

// The specs may change between two runs of a long matrix: a spec that moved is the same spec,
// and one that exists in one run only is not a failure of the other agent.
func TestSpecsChangedBetweenRuns(t *testing.T) {
	out := t.TempDir()
	aDir, bDir := filepath.Join(out, "a"), filepath.Join(out, "b")
	a := writeReport(t, aDir, suiteReport(
		it("guest-ping", "answers", 10, types.SpecStatePassed, "cmd:guest-ping"),
		it("guest-ping", "old spec", 20, types.SpecStatePassed, "cmd:guest-ping"),
	))
	b := writeReport(t, bDir, suiteReport(
		it("guest-ping", "answers", 14, types.SpecStatePassed, "cmd:guest-ping"), // moved 4 lines down
		it("guest-ping", "new spec", 30, types.SpecStatePassed, "cmd:guest-ping"),
	))
	m := Build(commands, []Input{
		{Run: Run{Agent: "a", Slug: "a", Dir: aDir}, ReportFile: a},
		{Run: Run{Agent: "b", Slug: "b", Dir: bDir}, ReportFile: b},
	}, out)
	if len(m.Specs) != 3 {
		t.Fatalf("%d specs, want 3 (the moved one once): %+v", len(m.Specs), m.Specs)
	}
	for _, s := range m.Specs {
		if s.Name == "guest-ping answers" && (s.Results[0].State != Pass || s.Results[1].State != Pass) {
			t.Errorf("the moved spec: %+v", s.Results)
		}
		if s.Name == "guest-ping new spec" && (s.Results[0].State != Skip || !strings.Contains(s.Results[0].Message, "changed between the runs")) {
			t.Errorf("a spec the first run did not have: %+v", s.Results[0])
		}
	}
	if m.Failed() {
		t.Error("a changed spec tree failed the matrix")
	}
	if c := cellOf(t, m, "guest-ping", 0); c.State != Pass || c.Counts[Pass] != 2 || c.Counts[Skip] != 1 {
		t.Errorf("guest-ping for a: %+v", c)
	}
}

// Ginkgo's own skips after a failure in an Ordered container are part of that failure, not a
// spec deciding it does not apply; a Skip() in a BeforeAll is.
func TestOrderedContainerSkips(t *testing.T) {
	out := t.TempDir()
	dir := filepath.Join(out, "a")
	first := failed(it("ordered", "first", 10, types.SpecStateFailed, "cmd:guest-ping"), "boom", 11)
	first.State = types.SpecStateFailed
	after := skippedBySpec(it("ordered", "second", 20, types.SpecStateSkipped, "cmd:guest-sync"),
		"Spec skipped because an earlier spec in an ordered container failed")
	afterAll := skippedBySpec(it("ordered2", "third", 30, types.SpecStateSkipped, "cmd:guest-info"),
		"Spec skipped because a BeforeAll node failed")
	askedFor := skippedBySpec(it("ordered3", "fourth", 40, types.SpecStateSkipped, "cmd:guest-fstrim"),
		"Spec skipped because Skip() was called in BeforeAll")
	path := writeReport(t, dir, suiteReport(first, after, afterAll, askedFor))
	m := Build(commands, []Input{{Run: Run{Agent: "a", Slug: "a", Dir: dir}, ReportFile: path}}, out)
	for cmd, want := range map[string]State{"guest-sync": NotRun, "guest-info": NotRun, "guest-fstrim": Unsupported} {
		if got := cellOf(t, m, cmd, 0).State; got != want {
			t.Errorf("%s: %s, want %s", cmd, got, want)
		}
	}
}
