package diff

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/schema"
)

// Target is one agent of a comparison, connected and synchronised.
type Target struct {
	// Name is "A" or "B".
	Name string
	// Bin is the agent binary, as given on the host.
	Bin string
	// Client talks to the agent.
	Client *qga.Client
	// Tmp is the agent's own scratch directory as the agent sees it: ${tmp} in the corpus,
	// and written back as ${tmp} in its replies.
	Tmp string

	vars map[string]any
	seq  int64 // end-of-entry markers sent so far
}

// AgentInfo describes one side of a run in the report.
type AgentInfo struct {
	Bin     string `json:"bin"`
	Version string `json:"version"`
}

// Reply is one line an agent sent, raw and normalised. Class, Value and Desc are what the
// comparison looks at.
type Reply struct {
	// Raw is the line as sent (0xFF written as \xff), after ${tmp} was put back.
	Raw string `json:"raw"`
	// Class is "return", "error:<class>" or "not-json", prefixed "0xFF " for a delimited line.
	Class string `json:"class"`
	// Value is the normalised reply without the error's desc, as canonical JSON (sorted keys).
	Value string `json:"value"`
	// Desc is the normalised error text.
	Desc string `json:"desc,omitempty"`
}

// Outcome is what one agent answered to one entry.
type Outcome struct {
	Replies []Reply `json:"replies"`
	// Problem says what went wrong on the way (the end-of-entry marker was swallowed, the
	// connection broke); it counts as part of the answer.
	Problem string `json:"problem,omitempty"`
}

// Kind is the kind of a difference.
type Kind string

// The kinds of difference, most severe first. Class and value differences fail a run unless
// documented; desc differences (error texts) are reported only.
const (
	KindClass Kind = "class"
	KindValue Kind = "value"
	KindDesc  Kind = "desc"
)

// Difference is one way the two outcomes of an entry differ.
type Difference struct {
	Kind Kind `json:"kind"`
	// Reply is the index of the reply that differs, -1 for the outcome as a whole.
	Reply int `json:"reply"`
	// What explains the difference in words.
	What string `json:"what"`
	// Documented is the reason from documented.json when the difference is accepted.
	Documented string `json:"documented,omitempty"`
}

// EntryResult is one entry of a run.
type EntryResult struct {
	ID   string `json:"id"`
	Cmd  string `json:"cmd,omitempty"`
	Note string `json:"note,omitempty"`
	// Sent is the request as sent to A, printable.
	Sent string `json:"sent,omitempty"`
	// Skipped says why the entry did not run.
	Skipped string       `json:"skipped,omitempty"`
	A       *Outcome     `json:"a,omitempty"`
	B       *Outcome     `json:"b,omitempty"`
	Diffs   []Difference `json:"diffs,omitempty"`
}

// Summary counts a run's results.
type Summary struct {
	Entries    int `json:"entries"`
	Ran        int `json:"ran"`
	Skipped    int `json:"skipped"`
	Same       int `json:"same"`
	Class      int `json:"class"`
	Value      int `json:"value"`
	Desc       int `json:"desc"`
	Documented int `json:"documented"`
}

// Result is a whole run.
type Result struct {
	Mode     Mode          `json:"mode"`
	Started  time.Time     `json:"started"`
	Duration string        `json:"duration"`
	A        AgentInfo     `json:"a"`
	B        AgentInfo     `json:"b"`
	Entries  []EntryResult `json:"entries"`
	Summary  Summary       `json:"summary"`
}

// Failed says whether the run has class or value differences that are not documented.
func (r *Result) Failed() bool { return r.Summary.Class+r.Summary.Value > 0 }

// Options tune a run.
type Options struct {
	// EntryTimeout bounds the wait for one entry's replies (default 10 s): a swallowed
	// end-of-entry marker costs this much once.
	EntryTimeout time.Duration
	// Progress, when set, gets one line per entry.
	Progress func(format string, a ...any)
}

// Run sends every entry of c that is safe in mode to a and then to b, and compares.
func Run(ctx context.Context, c *Corpus, mode Mode, a, b *Target, opts Options) (*Result, error) {
	if opts.EntryTimeout <= 0 {
		opts.EntryTimeout = 10 * time.Second
	}
	if opts.Progress == nil {
		opts.Progress = func(string, ...any) {}
	}
	seeds := schema.MustLoad()
	res := &Result{Mode: mode, Started: time.Now()}
	for _, t := range []*Target{a, b} {
		if t.vars == nil {
			t.vars = map[string]any{}
		}
		t.vars["tmp"] = t.Tmp
	}
	var err error
	if res.A, err = info(ctx, a); err != nil {
		return nil, err
	}
	if res.B, err = info(ctx, b); err != nil {
		return nil, err
	}
	for start := 0; start < len(c.Entries); {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("diff run: %w", err)
		}
		// A group (consecutive entries with the same Group) runs whole on A, then whole on
		// B: its entries share state that the other agent must not disturb in between.
		end := start + 1
		if g := c.Entries[start].Group; g != "" {
			for end < len(c.Entries) && c.Entries[end].Group == g {
				end++
			}
		}
		block := c.Entries[start:end]
		start = end
		results := make([]EntryResult, len(block))
		outs := make([][2]Outcome, len(block))
		for side, t := range []*Target{a, b} {
			for i, e := range block {
				er := &results[i]
				if side == 0 {
					*er = EntryResult{ID: e.ID, Cmd: e.Cmd, Note: e.Note}
					er.Skipped = e.Unsafe(mode)
					if p, err := e.Payload(a.vars); err == nil && er.Skipped == "" {
						er.Sent = strings.ReplaceAll(printable(p, 400), a.Tmp, "${tmp}")
					}
				}
				if er.Skipped != "" {
					continue
				}
				outs[i][side] = t.exchange(ctx, e, c.rules(e), seeds, opts.EntryTimeout)
			}
		}
		for i, e := range block {
			er := results[i]
			if er.Skipped == "" {
				er.A, er.B = &outs[i][0], &outs[i][1]
				er.Diffs = compare(outs[i][0], outs[i][1])
				for j := range er.Diffs {
					er.Diffs[j].Documented = c.documented(e.ID, mode, er.Diffs[j].Kind)
				}
			}
			opts.Progress("%-55s %s", e.ID, verdict(er))
			res.Entries = append(res.Entries, er)
		}
	}
	res.Duration = time.Since(res.Started).Round(time.Millisecond).String()
	res.Summary = summarise(res.Entries)
	return res, nil
}

// rules are the normalisations of an entry: its command's, then its own.
func (c *Corpus) rules(e Entry) map[string]string {
	rules := map[string]string{}
	for p, k := range c.Norm[e.Cmd] {
		rules[p] = k
	}
	for p, k := range e.Norm {
		rules[p] = k
	}
	return rules
}

// info asks the agent for its version (guest-info), for the report.
func info(ctx context.Context, t *Target) (AgentInfo, error) {
	var gi struct {
		Version string `json:"version"`
	}
	ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := t.Client.Call(ictx, "guest-info", nil, &gi); err != nil {
		return AgentInfo{}, fmt.Errorf("agent %s (%s): guest-info: %w", t.Name, t.Bin, err)
	}
	return AgentInfo{Bin: t.Bin, Version: gi.Version}, nil
}

func (c *Corpus) documented(id string, mode Mode, k Kind) string {
	for _, d := range c.Documented {
		if ok, _ := path.Match(d.Entry, id); !ok {
			continue
		}
		if d.Only != "" && d.Only != mode {
			continue
		}
		if len(d.Kinds) > 0 && !containsKind(d.Kinds, k) {
			continue
		}
		return d.Reason
	}
	return ""
}

func containsKind(ks []Kind, k Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

func verdict(er EntryResult) string {
	if er.Skipped != "" {
		return "skipped: " + er.Skipped
	}
	if len(er.Diffs) == 0 {
		return "same"
	}
	var parts []string
	for _, d := range er.Diffs {
		s := string(d.Kind)
		if d.Documented != "" {
			s += " (documented)"
		}
		parts = append(parts, s)
	}
	return "DIFF " + strings.Join(parts, ", ")
}

func summarise(entries []EntryResult) Summary {
	var s Summary
	for _, e := range entries {
		s.Entries++
		if e.Skipped != "" {
			s.Skipped++
			continue
		}
		s.Ran++
		if len(e.Diffs) == 0 {
			s.Same++
		}
		for _, d := range e.Diffs {
			switch {
			case d.Documented != "":
				s.Documented++
			case d.Kind == KindClass:
				s.Class++
			case d.Kind == KindValue:
				s.Value++
			default:
				s.Desc++
			}
		}
	}
	return s
}

// exchange sends one entry followed by an end-of-entry marker (guest-sync-delimited with a
// random id) and collects every reply up to the marker's. Both agents answer strictly in
// order, so everything before the marker's reply belongs to the entry, and no wait for
// silence is needed.
func (t *Target) exchange(ctx context.Context, e Entry, rules map[string]string, seeds *schema.Schema, timeout time.Duration) Outcome {
	var out Outcome
	// ${now_ns} is the harness's clock at the time of sending, for a guest-set-time that
	// leaves the guest's clock where it was.
	t.vars["now_ns"] = json.Number(strconv.FormatInt(time.Now().UnixNano(), 10))
	payload, err := e.Payload(t.vars)
	if err != nil {
		out.Problem = err.Error()
		return out
	}
	n := normaliser{rules: rules, tmp: t.Tmp, seeds: seeds}
	send := append([]byte(nil), payload...)
	if e.Flush {
		send = append(send, 0xFF)
	}
	id := t.markerID()
	send = fmt.Appendf(send, `{"execute":"guest-sync-delimited","arguments":{"id":%d}}`, id)
	n.now = time.Now()
	if err := t.Client.Send(ctx, send); err != nil {
		out.Problem = err.Error()
		return out
	}
	var raws [][]byte
	if err := t.collect(ctx, id, timeout, &raws); err != nil {
		// The entry left the agent's parser inside a message, which swallowed the marker
		// (or the agent died). 0xFF ends any partial message; whatever the agent says to it
		// is part of this entry's outcome.
		out.Problem = fmt.Sprintf("no reply to the end-of-entry marker: %v; resynchronised with 0xFF", err)
		id2 := t.markerID()
		resync := fmt.Appendf([]byte{0xFF}, `{"execute":"guest-sync-delimited","arguments":{"id":%d}}`, id2)
		if err := t.Client.Send(ctx, resync); err != nil {
			out.Problem += fmt.Sprintf("; resync failed: %v", err)
		} else if err := t.collect(ctx, id2, timeout, &raws); err != nil {
			out.Problem += fmt.Sprintf("; resync failed: %v", err)
		}
	}
	var first map[string]any
	for i, raw := range raws {
		r, obj := n.reply(raw)
		out.Replies = append(out.Replies, r)
		if i == 0 {
			first = obj
		}
	}
	t.save(e, first)
	return out
}

// save stores the entry's variables from its first reply. A variable the reply lacks is
// dropped, so that a later entry using it fails visibly instead of using an old value.
func (t *Target) save(e Entry, first map[string]any) {
	for name, p := range e.Save {
		parts, _ := parsePath(p)
		if v, ok := lookup(first, parts); ok && first != nil {
			t.vars[name] = v
		} else {
			delete(t.vars, name)
		}
	}
}

// collect reads lines until the delimited reply carrying id; the others are appended to raws
// (with their 0xFF, when they had one).
func (t *Target) collect(ctx context.Context, id int64, timeout time.Duration, raws *[][]byte) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		r, err := t.Client.ReadReply(cctx)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("nothing within %v", timeout)
			}
			return err
		}
		if r.Delimited && r.DecodeErr == nil && r.Err == nil {
			var got int64
			if json.Unmarshal(r.Return, &got) == nil && got == id {
				return nil
			}
		}
		line := r.Raw
		if r.Delimited {
			line = append([]byte{0xFF}, line...)
		}
		*raws = append(*raws, line)
	}
}

// reply normalises one line; obj is the decoded, unnormalised object (nil when not JSON).
func (n normaliser) reply(line []byte) (Reply, map[string]any) {
	delimited := len(line) > 0 && line[0] == 0xFF
	body := line
	prefix := ""
	if delimited {
		body, prefix = line[1:], "0xFF "
	}
	raw := printable(line, 2000)
	if n.tmp != "" {
		raw = strings.ReplaceAll(raw, n.tmp, "${tmp}")
	}
	r := Reply{Raw: raw}
	obj, err := decodeObject(body)
	if err != nil {
		r.Class = prefix + "not-json"
		r.Value = raw
		return r, nil
	}
	orig, _ := decodeObject(body)
	norm := n.object(obj)
	switch e := norm["error"].(type) {
	case map[string]any:
		class, _ := e["class"].(string)
		r.Class = prefix + "error:" + class
		r.Desc, _ = e["desc"].(string)
		delete(e, "desc")
	default:
		if _, ok := norm["return"]; ok {
			r.Class = prefix + "return"
		} else {
			r.Class = prefix + "other"
		}
	}
	r.Value = canonical(norm)
	return r, orig
}

// compare lists the differences between two outcomes of one entry.
func compare(a, b Outcome) []Difference {
	var ds []Difference
	if (a.Problem == "") != (b.Problem == "") {
		ds = append(ds, Difference{Kind: KindClass, Reply: -1,
			What: fmt.Sprintf("A: %s; B: %s", problemText(a.Problem), problemText(b.Problem))})
	}
	if len(a.Replies) != len(b.Replies) {
		ds = append(ds, Difference{Kind: KindClass, Reply: -1,
			What: fmt.Sprintf("A sent %d replies, B sent %d", len(a.Replies), len(b.Replies))})
	}
	for i := 0; i < min(len(a.Replies), len(b.Replies)); i++ {
		ra, rb := a.Replies[i], b.Replies[i]
		switch {
		case ra.Class != rb.Class:
			ds = append(ds, Difference{Kind: KindClass, Reply: i,
				What: fmt.Sprintf("reply %d: A %s, B %s", i+1, ra.Class, rb.Class)})
		case ra.Value != rb.Value:
			ds = append(ds, Difference{Kind: KindValue, Reply: i,
				What: fmt.Sprintf("reply %d: A %s, B %s", i+1, ra.Value, rb.Value)})
		case ra.Desc != rb.Desc:
			ds = append(ds, Difference{Kind: KindDesc, Reply: i,
				What: fmt.Sprintf("reply %d: A %q, B %q", i+1, ra.Desc, rb.Desc)})
		}
	}
	return ds
}

func problemText(p string) string {
	if p == "" {
		return "answered in order"
	}
	return p
}

// markerID numbers the end-of-entry markers. The numbers are the same for both agents (they
// get the same exchanges), because a swallowed marker's id can come back inside a reply (an
// error about the mangled request echoes it) and must not differ between the agents. They are
// far from any id the corpus uses.
func (t *Target) markerID() int64 {
	t.seq++
	return 7_000_000_000_000_000 + t.seq
}

// printable shows bytes as text: printable ASCII as is, anything else as \xNN; at most max
// bytes, then how many there were. A long run of one byte (a nesting test) is shown once with
// its count.
func printable(b []byte, max int) string {
	var sb strings.Builder
	for i := 0; i < len(b); {
		j := i
		for j < len(b) && b[j] == b[i] {
			j++
		}
		if j-i > 8 {
			sb.WriteString(printable(b[i:i+1], 4))
			fmt.Fprintf(&sb, "…(×%d)", j-i)
			i = j
			continue
		}
		c := b[i]
		switch {
		case c >= 0x20 && c < 0x7f:
			sb.WriteByte(c)
		case c == '\n':
			sb.WriteString(`\n`)
		default:
			fmt.Fprintf(&sb, `\x%02x`, c)
		}
		i++
		if sb.Len() > max {
			fmt.Fprintf(&sb, "… (%d bytes)", len(b))
			break
		}
	}
	return sb.String()
}
