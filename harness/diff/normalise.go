package diff

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/qgakit/qgakit/schema"
)

// The normalisations a corpus may ask for, each for a value that two correct agents may
// legitimately report differently:
//
//	any            the value is replaced by "<any>" (the version string)
//	type           the value is replaced by its JSON type, "<number>" and so on
//	shape          every scalar inside the value is replaced by its type; keys and lengths stay
//	               (network statistics: counters move between the two agents' calls)
//	time-ns        an integer within an hour of the harness's clock becomes "<time-ns>"; any
//	               other value is kept, so a wrong unit or epoch still shows
//	handle         a non-negative integer becomes "<handle>" (each agent counts its own)
//	seed-commands  a guest-info command list keeps the seed's commands only, in the order sent
//	               (an agent may implement more than the seed: the reference 7.2 lists 36)
//	sort           a list is sorted by the JSON text of its elements (readdir order)
const (
	NormAny          = "any"
	NormType         = "type"
	NormShape        = "shape"
	NormTimeNS       = "time-ns"
	NormHandle       = "handle"
	NormSeedCommands = "seed-commands"
	NormSort         = "sort"
)

var normKinds = []string{NormAny, NormType, NormShape, NormTimeNS, NormHandle, NormSeedCommands, NormSort}

// timeWindow is how far a reported time may be from the harness's clock and still count as
// "now": the agents, the host and a tiny guest started from the host's clock agree to well
// within it, and a unit error (µs or s instead of ns) is off by orders of magnitude.
const timeWindow = time.Hour

func checkNorm(path, kind string) error {
	if _, err := parsePath(path); err != nil {
		return err
	}
	for _, k := range normKinds {
		if k == kind {
			return nil
		}
	}
	return fmt.Errorf("unknown normalisation %q for %s (know %s)", kind, path, strings.Join(normKinds, ", "))
}

// parsePath splits a reply path: member names joined by dots, "*" for every element of a list
// or every member of an object ("return.*.statistics").
func parsePath(p string) ([]string, error) {
	if p == "" {
		return nil, errors.New("empty path")
	}
	parts := strings.Split(p, ".")
	for _, s := range parts {
		if s == "" {
			return nil, fmt.Errorf("path %q has an empty member name", p)
		}
	}
	return parts, nil
}

// lookup returns the value at path in v (the first match of a wildcard), and whether there is
// one.
func lookup(v any, path []string) (any, bool) {
	if len(path) == 0 {
		return v, true
	}
	switch t := v.(type) {
	case map[string]any:
		if path[0] == "*" {
			keys := sortedKeys(t)
			for _, k := range keys {
				if r, ok := lookup(t[k], path[1:]); ok {
					return r, true
				}
			}
			return nil, false
		}
		c, ok := t[path[0]]
		if !ok {
			return nil, false
		}
		return lookup(c, path[1:])
	case []any:
		if path[0] != "*" {
			return nil, false
		}
		for _, c := range t {
			if r, ok := lookup(c, path[1:]); ok {
				return r, true
			}
		}
	}
	return nil, false
}

// apply replaces every value at path in v by f(value) and returns the new v.
func apply(v any, path []string, f func(any) any) any {
	if len(path) == 0 {
		return f(v)
	}
	switch t := v.(type) {
	case map[string]any:
		if path[0] == "*" {
			for k, c := range t {
				t[k] = apply(c, path[1:], f)
			}
		} else if c, ok := t[path[0]]; ok {
			t[path[0]] = apply(c, path[1:], f)
		}
	case []any:
		if path[0] == "*" {
			for i, c := range t {
				t[i] = apply(c, path[1:], f)
			}
		}
	}
	return v
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// normaliser is what normalises one agent's replies in one exchange.
type normaliser struct {
	rules map[string]string
	tmp   string // the agent's temporary directory, written "${tmp}" in replies
	now   time.Time
	seeds *schema.Schema
}

// object normalises a decoded reply object in place and returns it.
func (n normaliser) object(obj map[string]any) map[string]any {
	var v any = obj
	if n.tmp != "" {
		v = replaceStrings(v, func(s string) string { return strings.ReplaceAll(s, n.tmp, "${tmp}") })
	}
	paths := make([]string, 0, len(n.rules))
	for p := range n.rules {
		paths = append(paths, p)
	}
	// Deeper paths first, so that "return" normalised as a whole does not hide its members'
	// rules (and the order is the same on every run).
	sort.Slice(paths, func(i, j int) bool {
		di, dj := strings.Count(paths[i], "."), strings.Count(paths[j], ".")
		if di != dj {
			return di > dj
		}
		return paths[i] < paths[j]
	})
	for _, p := range paths {
		parts, _ := parsePath(p)
		kind := n.rules[p]
		v = apply(v, parts, func(x any) any { return n.value(kind, x) })
	}
	return v.(map[string]any)
}

func (n normaliser) value(kind string, v any) any {
	switch kind {
	case NormAny:
		return "<any>"
	case NormType:
		return "<" + typeName(v) + ">"
	case NormShape:
		return shape(v)
	case NormTimeNS:
		num, ok := v.(json.Number)
		if !ok {
			return v
		}
		ns, err := num.Int64()
		if err != nil {
			return v
		}
		if d := time.Duration(ns - n.now.UnixNano()); d.Abs() <= timeWindow && !n.now.IsZero() {
			return "<time-ns>"
		}
		return v
	case NormHandle:
		if num, ok := v.(json.Number); ok {
			if h, err := num.Int64(); err == nil && h >= 0 {
				return "<handle>"
			}
		}
		return v
	case NormSeedCommands:
		list, ok := v.([]any)
		if !ok {
			return v
		}
		out := []any{}
		for _, c := range list {
			m, ok := c.(map[string]any)
			if !ok {
				out = append(out, c)
				continue
			}
			if name, _ := m["name"].(string); n.seeds.Command(name) == nil {
				continue
			}
			out = append(out, c)
		}
		return out
	case NormSort:
		list, ok := v.([]any)
		if !ok {
			return v
		}
		type keyed struct {
			key string
			v   any
		}
		ks := make([]keyed, len(list))
		for i, c := range list {
			b, _ := json.Marshal(c)
			ks[i] = keyed{string(b), c}
		}
		sort.SliceStable(ks, func(i, j int) bool { return ks[i].key < ks[j].key })
		out := make([]any, len(ks))
		for i, k := range ks {
			out[i] = k.v
		}
		return out
	}
	return v
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number, float64:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

func shape(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, c := range t {
			t[k] = shape(c)
		}
		return t
	case []any:
		for i, c := range t {
			t[i] = shape(c)
		}
		return t
	}
	return "<" + typeName(v) + ">"
}

func replaceStrings(v any, f func(string) string) any {
	switch t := v.(type) {
	case string:
		return f(t)
	case map[string]any:
		for k, c := range t {
			t[k] = replaceStrings(c, f)
		}
	case []any:
		for i, c := range t {
			t[i] = replaceStrings(c, f)
		}
	}
	return v
}

// decodeObject decodes a reply line keeping numbers exact (a 64-bit id must not round).
func decodeObject(line []byte) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(string(line)))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, errors.New("not a JSON object")
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value on the line")
	}
	return obj, nil
}

// canonical is the JSON text of a normalised value: maps marshal with sorted keys, so two
// values are equal exactly when their canonical texts are.
func canonical(v any) string {
	if v == nil {
		return ""
	}
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprintf("%v", v)
	}
	return strings.TrimSuffix(sb.String(), "\n")
}
