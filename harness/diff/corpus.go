// Package diff is the differential mode: it sends one request corpus (corpus/requests/*.json)
// to two agents, normalises what may legitimately differ between two correct agents (times,
// handles, key order, the version string, per-run counters), and reports every remaining
// difference in error class, return value or error text. Accepted differences are listed with
// a reason in corpus/documented.json: they are reported as "documented" and do not fail a run.
//
// The two agents run either on the host in unix-listen mode (Host, seconds) or in one tiny VM,
// each on its own virtio-serial port (VM, a minute). Both give a Target per agent; Run drives
// them entry by entry, first A then B, so that a state change one entry makes (a file written,
// a vCPU taken offline) is seen by both agents' next entries alike.
package diff

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/qgakit/qgakit/schema"
)

// Mode says where a run happens; entries and documented differences can be limited to one.
type Mode string

// The two places a diff runs.
const (
	ModeHost Mode = "host"
	ModeVM   Mode = "vm"
)

// Segment is one piece of an entry's raw bytes: text (placeholders expanded), bytes given in
// hex, or a text repeated Count times. In the corpus a segment is a JSON string (text), or an
// object {"hex": "ff fe"} or {"repeat": "[", "count": 1025}.
type Segment struct {
	Text   string `json:"text,omitempty"`
	Hex    string `json:"hex,omitempty"`
	Repeat string `json:"repeat,omitempty"`
	Count  int    `json:"count,omitempty"`
}

// UnmarshalJSON accepts a plain string as a text segment.
func (s *Segment) UnmarshalJSON(b []byte) error {
	var text string
	if err := json.Unmarshal(b, &text); err == nil {
		*s = Segment{Text: text}
		return nil
	}
	type plain Segment
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("segment %s: %w", b, err)
	}
	set := 0
	for _, ok := range []bool{p.Text != "", p.Hex != "", p.Repeat != ""} {
		if ok {
			set++
		}
	}
	if set != 1 {
		return fmt.Errorf("segment %s: give exactly one of text, hex, repeat", b)
	}
	if p.Repeat != "" && p.Count <= 0 {
		return fmt.Errorf("segment %s: repeat needs a positive count", b)
	}
	*s = Segment(p)
	return nil
}

// bytes renders the segment, with expand applied to its text.
func (s Segment) bytes(expand func(string) string) ([]byte, error) {
	switch {
	case s.Hex != "":
		b, err := hex.DecodeString(strings.Join(strings.Fields(s.Hex), ""))
		if err != nil {
			return nil, fmt.Errorf("hex segment %q: %w", s.Hex, err)
		}
		return b, nil
	case s.Repeat != "":
		return []byte(strings.Repeat(expand(s.Repeat), s.Count)), nil
	default:
		return []byte(expand(s.Text)), nil
	}
}

// Entry is one request of the corpus.
type Entry struct {
	// ID is "<file base>/<name>", unique in the corpus; documented differences refer to it.
	ID string `json:"-"`
	// Name is the entry's name inside its file.
	Name string `json:"name"`
	// Cmd is the seed command the entry exercises ("" for garbage that names none). It decides
	// whether the entry is safe to run where it is (see Unsafe). Taken from Send's "execute"
	// when not given; it must be given for raw entries that name a command.
	Cmd string `json:"cmd,omitempty"`
	// Send is a JSON request, sent compactly with its members in the order written.
	Send json.RawMessage `json:"send,omitempty"`
	// Raw is sent as given instead: any bytes, JSON or not.
	Raw []Segment `json:"raw,omitempty"`
	// Flush sends 0xFF before the end-of-entry marker, for entries that may leave partial
	// input behind; the agents' replies to that 0xFF are part of the comparison.
	Flush bool `json:"flush,omitempty"`
	// Only limits the entry to one mode.
	Only Mode `json:"only,omitempty"`
	// Safe says that the request fails its argument checks before the command acts, so the
	// entry runs even where its command is unsafe.
	Safe bool `json:"safe,omitempty"`
	// Norm maps a path in the reply (see normalise) to a normalisation, on top of the file's
	// per-command defaults.
	Norm map[string]string `json:"norm,omitempty"`
	// Save stores the value at a path of the (first) reply, per agent, as a variable that
	// later entries use as ${name}.
	Save map[string]string `json:"save,omitempty"`
	// Group names a sequence of consecutive entries that runs whole on A and then whole on B,
	// for state one agent's entries must not see the other change in between (a freeze).
	Group string `json:"group,omitempty"`
	// Note says what the entry checks.
	Note string `json:"note,omitempty"`
}

// File is one corpus file.
type File struct {
	// About describes the file.
	About string `json:"about,omitempty"`
	// Norm maps a command to the normalisations every entry of it gets.
	Norm map[string]map[string]string `json:"norm,omitempty"`
	// Entries run in this order.
	Entries []Entry `json:"entries"`
}

// Documented is one accepted difference.
type Documented struct {
	// Entry is an entry ID or a path.Match pattern of entry IDs.
	Entry string `json:"entry"`
	// Kinds limits the acceptance to these kinds of difference (class, value, desc); all when
	// empty.
	Kinds []Kind `json:"kinds,omitempty"`
	// Only limits the acceptance to one mode.
	Only Mode `json:"only,omitempty"`
	// Reason says why the difference is right or accepted.
	Reason string `json:"reason"`
}

// Corpus is the loaded request corpus and its documented differences.
type Corpus struct {
	Entries    []Entry
	Norm       map[string]map[string]string // per command, merged over all files
	Documented []Documented
}

// unsafeVM are the commands whose success would take the VM away from the run (power) or
// block the other agent's file system (freeze).
var unsafeVM = []string{
	"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
	"guest-fsfreeze-freeze",
}

// unsafeHost adds what must not touch the machine the harness runs on.
var unsafeHost = append(slices.Clone(unsafeVM),
	"guest-set-time", "guest-set-vcpus", "guest-fstrim")

// Unsafe says why e cannot run in mode, or "" when it can.
func (e Entry) Unsafe(mode Mode) string {
	if e.Only != "" && e.Only != mode {
		return "only in " + string(e.Only) + " mode"
	}
	if e.Safe {
		return ""
	}
	list := unsafeVM
	if mode == ModeHost {
		list = unsafeHost
	}
	if slices.Contains(list, e.Cmd) {
		return e.Cmd + " is not safe in " + string(mode) + " mode"
	}
	return ""
}

// Load reads dir/requests/*.json (in name order) and dir/documented.json.
func Load(dir string) (*Corpus, error) {
	files, err := filepath.Glob(filepath.Join(dir, "requests", "*.json"))
	if err != nil {
		return nil, fmt.Errorf("list corpus files: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no corpus files in %s", filepath.Join(dir, "requests"))
	}
	sort.Strings(files)
	seeds := schema.MustLoad()
	c := &Corpus{Norm: map[string]map[string]string{}}
	seen := map[string]bool{}
	for _, path := range files {
		f, err := readFile(path)
		if err != nil {
			return nil, err
		}
		base := strings.TrimSuffix(filepath.Base(path), ".json")
		for cmd, norm := range f.Norm {
			if seeds.Command(cmd) == nil {
				return nil, fmt.Errorf("%s: norm for %q, which is not a seed command", path, cmd)
			}
			if c.Norm[cmd] == nil {
				c.Norm[cmd] = map[string]string{}
			}
			for p, k := range norm {
				if err := checkNorm(p, k); err != nil {
					return nil, fmt.Errorf("%s: norm of %s: %w", path, cmd, err)
				}
				c.Norm[cmd][p] = k
			}
		}
		for _, e := range f.Entries {
			e.ID = base + "/" + e.Name
			if err := e.check(seeds); err != nil {
				return nil, fmt.Errorf("%s: entry %q: %w", path, e.Name, err)
			}
			if seen[e.ID] {
				return nil, fmt.Errorf("%s: entry %q appears twice", path, e.Name)
			}
			seen[e.ID] = true
			c.Entries = append(c.Entries, e)
		}
	}
	doc, err := readDocumented(filepath.Join(dir, "documented.json"))
	if err != nil {
		return nil, err
	}
	for _, d := range doc {
		if _, err := path.Match(d.Entry, ""); err != nil {
			return nil, fmt.Errorf("documented.json: entry pattern %q: %w", d.Entry, err)
		}
		if strings.TrimSpace(d.Reason) == "" {
			return nil, fmt.Errorf("documented.json: %q has no reason", d.Entry)
		}
		if !c.matchesAny(d.Entry) {
			return nil, fmt.Errorf("documented.json: %q matches no corpus entry", d.Entry)
		}
		for _, k := range d.Kinds {
			if k != KindClass && k != KindValue && k != KindDesc {
				return nil, fmt.Errorf("documented.json: %q: unknown kind %q", d.Entry, k)
			}
		}
	}
	c.Documented = doc
	return c, nil
}

func (c *Corpus) matchesAny(pattern string) bool {
	for _, e := range c.Entries {
		if ok, _ := path.Match(pattern, e.ID); ok {
			return true
		}
	}
	return false
}

func readFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read corpus: %w", err)
	}
	var f File
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return &f, nil
}

func readDocumented(path string) ([]Documented, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read documented differences: %w", err)
	}
	var f struct {
		About      string       `json:"about,omitempty"`
		Documented []Documented `json:"documented"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return f.Documented, nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._+-]*(/[a-z0-9][a-z0-9._+-]*)*$`)

// check validates an entry and fills Cmd from Send.
func (e *Entry) check(seeds *schema.Schema) error {
	if !nameRE.MatchString(e.Name) {
		return fmt.Errorf("name must be lower-case words joined by / (got %q)", e.Name)
	}
	if (len(e.Send) == 0) == (len(e.Raw) == 0) {
		return errors.New("give exactly one of send and raw")
	}
	if e.Only != "" && e.Only != ModeHost && e.Only != ModeVM {
		return fmt.Errorf("only: %q is not host or vm", e.Only)
	}
	if len(e.Send) > 0 {
		var req map[string]json.RawMessage
		if err := json.Unmarshal(e.Send, &req); err == nil {
			var exec string
			if json.Unmarshal(req["execute"], &exec) == nil && exec != "" {
				if e.Cmd == "" && seeds.Command(exec) != nil {
					e.Cmd = exec
				}
				if e.Cmd != "" && exec != e.Cmd {
					return fmt.Errorf("cmd %q but execute %q", e.Cmd, exec)
				}
			}
		} else if !json.Valid(e.Send) {
			return errors.New("send is not JSON (use raw for bytes that are not)")
		}
	}
	if e.Cmd != "" && seeds.Command(e.Cmd) == nil {
		return fmt.Errorf("cmd %q is not a seed command", e.Cmd)
	}
	// A raw entry that names an unsafe command must say so, or the safety check cannot see it.
	if e.Cmd == "" {
		text := string(e.Send)
		for _, s := range e.Raw {
			text += s.Text + s.Repeat
		}
		for _, c := range unsafeHost {
			if strings.Contains(text, c) {
				return fmt.Errorf("it names %s: set cmd (and safe, if it is)", c)
			}
		}
	}
	for p, k := range e.Norm {
		if err := checkNorm(p, k); err != nil {
			return err
		}
	}
	for v, p := range e.Save {
		if !varRE.MatchString(v) || v == "tmp" {
			return fmt.Errorf("save: bad variable name %q", v)
		}
		if _, err := parsePath(p); err != nil {
			return fmt.Errorf("save %s: %w", v, err)
		}
	}
	return e.checkHostPaths()
}

// checkHostPaths refuses file entries that could write outside the per-agent temporary
// directory: on the host the agents run with the harness's privileges.
func (e *Entry) checkHostPaths() error {
	if e.Cmd != "guest-file-open" || len(e.Send) == 0 || e.Only == ModeVM {
		return nil
	}
	var req struct {
		Arguments struct {
			Path any `json:"path"`
			Mode any `json:"mode"`
		} `json:"arguments"`
	}
	// Arguments that do not decode here (not an object) are refused by every agent's argument
	// checks, and leave path empty.
	_ = json.Unmarshal(e.Send, &req)
	path, _ := req.Arguments.Path.(string)
	mode, _ := req.Arguments.Mode.(string)
	if path == "" || strings.HasPrefix(path, "${tmp}") {
		return nil
	}
	if mode == "" || mode == "r" || mode == "rb" || strings.Trim(mode, "rbwa+") != "" {
		return nil // read-only, or a mode every agent refuses
	}
	return fmt.Errorf("opens %q for writing outside ${tmp}: limit it to vm mode or use ${tmp}", path)
}

var varRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// placeholderRE finds ${name} in corpus text.
var placeholderRE = regexp.MustCompile(`\$\{([a-z][a-z0-9_]*)\}`)

// Payload renders the bytes to send for e, with ${name} replaced from vars (JSON values). In
// Send, a string that is exactly "${name}" becomes the variable's JSON value (a handle stays
// a number); inside longer strings and in raw text a string variable is spliced in as text.
func (e Entry) Payload(vars map[string]any) ([]byte, error) {
	var missing []string
	text := func(s string, inJSON bool) string {
		return placeholderRE.ReplaceAllStringFunc(s, func(m string) string {
			name := placeholderRE.FindStringSubmatch(m)[1]
			v, ok := vars[name]
			if !ok {
				missing = append(missing, name)
				return m
			}
			if str, ok := v.(string); ok {
				if inJSON {
					b, _ := json.Marshal(str)
					return string(b[1 : len(b)-1])
				}
				return str
			}
			b, _ := json.Marshal(v)
			return string(b)
		})
	}
	var out []byte
	if len(e.Send) > 0 {
		s := wholeRE.ReplaceAllStringFunc(string(e.Send), func(m string) string {
			name := wholeRE.FindStringSubmatch(m)[1]
			v, ok := vars[name]
			if !ok {
				return m
			}
			b, _ := json.Marshal(v)
			return string(b)
		})
		s = text(s, true)
		var buf bytes.Buffer
		if err := json.Compact(&buf, []byte(s)); err != nil {
			return nil, fmt.Errorf("entry %s: expanded send is not JSON: %w", e.ID, err)
		}
		out = buf.Bytes()
	} else {
		for _, seg := range e.Raw {
			b, err := seg.bytes(func(s string) string { return text(s, false) })
			if err != nil {
				return nil, fmt.Errorf("entry %s: %w", e.ID, err)
			}
			out = append(out, b...)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("entry %s: no value for ${%s} (an earlier entry's save failed?)", e.ID, strings.Join(missing, "}, ${"))
	}
	return out, nil
}

var wholeRE = regexp.MustCompile(`"\$\{([a-z][a-z0-9_]*)\}"`)
