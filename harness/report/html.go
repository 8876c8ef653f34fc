package report

import (
	"fmt"
	"html/template"
	"io"
	"strings"
)

// WriteHTML renders the matrix as one self-contained page (inline CSS, no script, no external
// resource): the matrix in colour, then per command a drill-down (<details>) listing each spec
// with its state for every agent, failure messages and artifact links.
func WriteHTML(w io.Writer, m *Matrix) error {
	type specRow struct {
		Spec    Spec
		Results []Result
	}
	type cmdView struct {
		Command
		Rows  []specRow
		Fails bool
	}
	view := struct {
		M        *Matrix
		Failed   bool
		Cmds     []cmdView
		Other    []specRow
		Legend   string
		Counts   []string
		Generate string
	}{M: m, Failed: m.Failed(), Legend: Legend, Generate: m.Generated.UTC().Format("2006-01-02 15:04 UTC")}
	for ri := range m.Runs {
		view.Counts = append(view.Counts, m.runCounts(ri))
	}
	for _, c := range m.Commands {
		cv := cmdView{Command: c}
		for _, i := range c.Specs {
			cv.Rows = append(cv.Rows, specRow{Spec: m.Specs[i], Results: m.Specs[i].Results})
		}
		for _, cell := range c.Cells {
			if cell.State == Fail || cell.State == NotRun {
				cv.Fails = true
			}
		}
		view.Cmds = append(view.Cmds, cv)
	}
	for _, i := range m.Other {
		view.Other = append(view.Other, specRow{Spec: m.Specs[i], Results: m.Specs[i].Results})
	}
	if err := page.Execute(w, view); err != nil {
		return fmt.Errorf("render conformance.html: %w", err)
	}
	return nil
}

var page = template.Must(template.New("page").Funcs(template.FuncMap{
	"cls":     func(s State) string { return strings.ReplaceAll(string(s), " ", "-") },
	"cell":    func(c Cell) string { return strings.ReplaceAll(CellText(c), "**", "") },
	"oneLine": oneLine,
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>qgakit conformance</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{margin:0 0 4px;font-size:24px} h2{font-size:18px;margin:28px 0 8px}
.verdict{display:inline-block;padding:4px 10px;border-radius:4px;font-weight:600;margin:6px 0 14px}
.verdict.pass{background:#dafbe1;color:#116329}.verdict.fail{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.state{white-space:nowrap;font-weight:600}
.pass{background:#dafbe1;color:#116329}
.fail{background:#ffc1c0;color:#82071e}
.not-run{background:#ffd8b5;color:#7a2e00}
.unsupported{background:#ddf4ff;color:#0a3069}
.skip{background:#eaeef2;color:#57606a}
.no-spec{background:#fff8c5;color:#6c4400}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;margin:4px 0;background:#f6f8fa;padding:6px;border-radius:4px;max-height:18em;overflow:auto}
details{margin:4px 0;border:1px solid #d0d7de;border-radius:6px;padding:4px 10px}
details[open]{padding-bottom:10px}
summary{cursor:pointer;font-weight:600}
.badge{display:inline-block;margin-left:6px;padding:0 6px;border-radius:3px;font-weight:500;font-size:12px}
.legend{color:#57606a;font-size:12px;max-width:70em}
.small{color:#57606a;font-size:12px}
</style></head><body>
<h1>qgakit conformance</h1>
<div class="small">generated {{.Generate}}</div>
{{if .Failed}}<div class="verdict fail">FAIL — an agent failed a spec it must pass, or a run broke</div>
{{else}}<div class="verdict pass">PASS — every agent passed every spec that applies to it</div>{{end}}
<table><tr><th>agent</th><th>version</th><th>specs</th><th>suite time</th><th>artifacts</th></tr>
{{range $i, $r := .M.Runs}}<tr><td><code>{{$r.Agent}}</code>{{if $r.LabelFilter}}<div class="small">LABELS={{$r.LabelFilter}}</div>{{end}}</td>
<td>{{if $r.Version}}<b>{{$r.Version}}</b>{{else}}unknown{{end}}{{if $r.VersionSource}}<div class="small">{{$r.VersionSource}}</div>{{end}}</td>
<td>{{index $.Counts $i}}</td><td>{{$r.Duration.Round 1000000000}}</td><td><a href="{{$r.Link}}/">{{$r.Link}}/</a></td></tr>
{{end}}</table>
{{range .M.Runs}}{{if .Problems}}<h2>Failures outside the specs: <code>{{.Agent}}</code></h2>
{{range .Problems}}<div><b>{{.What}}</b> {{if .Location}}<span class="small">at {{.Location}}</span>{{end}}<pre>{{.Message}}</pre></div>{{end}}
{{end}}{{end}}
<h2>Commands × agents</h2>
<table><tr><th>command</th>{{range .M.Runs}}<th><code>{{.Agent}}</code></th>{{end}}</tr>
{{range .Cmds}}<tr><td><a href="#cmd-{{.Name}}">{{.Name}}</a></td>{{range .Cells}}<td class="state {{cls .State}}">{{cell .}}</td>{{end}}</tr>
{{end}}</table>
<p class="legend">{{.Legend}}.</p>
<h2>Specs by command</h2>
{{range .Cmds}}<details id="cmd-{{.Name}}"{{if .Fails}} open{{end}}><summary>{{.Name}}{{range .Cells}}<span class="badge {{cls .State}}">{{cell .}}</span>{{end}}</summary>
{{if .Rows}}<table><tr><th>spec</th>{{range $.M.Runs}}<th><code>{{.Agent}}</code></th>{{end}}</tr>
{{range .Rows}}<tr><td>{{.Spec.Name}}<div class="small">{{.Spec.Location}}</div></td>
{{range .Results}}<td class="{{cls .State}}"><b>{{.State}}</b>{{if .Location}} <span class="small">at {{.Location}}</span>{{end}}
{{if .Message}}<pre>{{.Message}}</pre>{{end}}{{if .Artifacts}}<a href="{{.Artifacts}}">artifacts</a>{{end}}</td>{{end}}</tr>
{{end}}</table>{{else}}<p>No spec carries <code>cmd:{{.Name}}</code>.</p>{{end}}
</details>
{{end}}
{{if .Other}}<h2>Specs without a cmd: label</h2>
<table><tr><th>spec</th>{{range $.M.Runs}}<th><code>{{.Agent}}</code></th>{{end}}</tr>
{{range .Other}}<tr><td>{{.Spec.Name}}<div class="small">{{.Spec.Location}}</div></td>
{{range .Results}}<td class="{{cls .State}}"><b>{{.State}}</b>{{if .Message}}<pre>{{.Message}}</pre>{{end}}{{if .Artifacts}}<a href="{{.Artifacts}}">artifacts</a>{{end}}</td>{{end}}</tr>
{{end}}</table>{{end}}
<p class="small">From each run's Ginkgo JSON report (<code>&lt;artifacts&gt;/&lt;agent&gt;/report.json</code>) by harness/cmd/conformance.</p>
</body></html>
`))
