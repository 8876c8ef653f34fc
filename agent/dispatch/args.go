package dispatch

import (
	"math"
	"strconv"

	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/schema"
)

// The argument checks follow QEMU's strict QObject input visitor (qapi/qobject-input-visitor.c)
// driven by the generated visitors: members in schema order, each checked as it is met, then
// the leftover members of each object; errors name nested values as the visitor's full_name
// does ("vcpus[1].logical-id"), except the enum, sized-integer and alternate errors, which the
// reference words with the bare member name.

// jsonKind is the QType of a decoded value.
type jsonKind int

const (
	kindNone jsonKind = iota
	kindNull
	kindNumber
	kindString
	kindBool
	kindObject
	kindArray
)

func kindOf(v any) jsonKind {
	switch v.(type) {
	case nil:
		return kindNull
	case int64, uint64, float64, int, int32, uint32:
		return kindNumber
	case string:
		return kindString
	case bool:
		return kindBool
	case map[string]any, Args:
		return kindObject
	case []any:
		return kindArray
	}
	return kindNone
}

func invalidType(name, expected string) *protocol.Error {
	return protocol.Errorf("Invalid parameter type for '%s', expected: %s", name, expected)
}

// invalidValue is QERR_INVALID_PARAMETER_VALUE.
func invalidValue(name, expected string) *protocol.Error {
	return protocol.Errorf("Parameter '%s' expects %s", name, expected)
}

// bare is the visitor's "name ? name : \"null\"".
func bare(name string) string {
	if name == "" {
		return "null"
	}
	return name
}

type checker struct{ s *schema.Schema }

// object checks the members of one object: obj is nil when the object is the absent
// 'arguments' of a request.
func (c checker) object(path string, members []schema.Member, obj map[string]any) (Args, *protocol.Error) {
	out := make(Args, len(members))
	consumed := make([]string, 0, len(members))
	for _, m := range members {
		full := m.Name
		if path != "" {
			full = path + "." + m.Name
		}
		v, present := obj[m.Name]
		if !present {
			if m.Optional {
				continue
			}
			return nil, protocol.Errorf("Parameter '%s' is missing", full)
		}
		// An optional member given as null is present: the reference type-checks it.
		val, err := c.value(m.Type, full, m.Name, v)
		if err != nil {
			return nil, err
		}
		out[m.Name] = val
		consumed = append(consumed, m.Name)
	}
	if extra, ok := firstUnexpected(obj, consumed); ok {
		full := extra
		if path != "" {
			full = path + "." + extra
		}
		return nil, protocol.Errorf("Parameter '%s' is unexpected", full)
	}
	return out, nil
}

// value checks one value of type t. full is its visitor full name, name its bare member name
// ("" for list elements).
func (c checker) value(t schema.TypeRef, full, name string, v any) (any, *protocol.Error) {
	if t.List {
		list, ok := v.([]any)
		if !ok {
			return nil, invalidType(full, "array")
		}
		out := make([]any, len(list))
		elem := schema.TypeRef{Name: t.Name}
		for i, e := range list {
			val, err := c.value(elem, full+"["+strconv.Itoa(i)+"]", "", e)
			if err != nil {
				return nil, err
			}
			out[i] = val
		}
		return out, nil
	}
	typ := c.s.Types[t.Name]
	if typ == nil {
		// The schema package resolves every reference; reaching this is a schema defect.
		return nil, protocol.Errorf("Parameter '%s' has unknown type %s", full, t.Name)
	}
	switch typ.Kind {
	case schema.Struct:
		obj, ok := asObject(v)
		if !ok {
			return nil, invalidType(full, "object")
		}
		return c.object(full, typ.Members, obj)
	case schema.Enum:
		s, ok := v.(string)
		if !ok {
			return nil, invalidType(full, "string")
		}
		for _, ev := range typ.Values {
			if ev == s {
				return s, nil
			}
		}
		return nil, protocol.Errorf("Parameter '%s' does not accept value '%s'", bare(name), s)
	case schema.Alternate:
		k := kindOf(v)
		for _, alt := range typ.Alternatives {
			if c.kindOfType(alt.Type) == k {
				return c.value(alt.Type, full, name, v)
			}
		}
		return nil, invalidType(bare(name), typ.Name)
	}
	return builtin(t.Name, full, name, v)
}

// kindOfType is the QType an alternate branch of type t accepts.
func (c checker) kindOfType(t schema.TypeRef) jsonKind {
	if t.List {
		return kindArray
	}
	typ := c.s.Types[t.Name]
	if typ == nil {
		return kindNone
	}
	switch typ.Kind {
	case schema.Struct:
		return kindObject
	case schema.Enum:
		return kindString
	case schema.Alternate:
		return kindNone
	}
	switch t.Name {
	case "str":
		return kindString
	case "bool":
		return kindBool
	case "null":
		return kindNull
	case "any":
		return kindNone
	}
	return kindNumber
}

func asObject(v any) (map[string]any, bool) {
	switch o := v.(type) {
	case map[string]any:
		return o, true
	case Args:
		return o, true
	}
	return nil, false
}

// asInt64 is qnum_get_try_int: integers that fit int64, nothing else (not 1.0).
func asInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int:
		return int64(n), true
	case int32:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		if n <= math.MaxInt64 {
			return int64(n), true
		}
	}
	return 0, false
}

// asUint64 is the input visitor's type_uint64: unsigned integers, and negative ones cast
// "for backward compatibility".
func asUint64(v any) (uint64, bool) {
	if n, ok := v.(uint64); ok {
		return n, true
	}
	if n, ok := asInt64(v); ok {
		return uint64(n), true
	}
	return 0, false
}

var intRanges = map[string][2]int64{
	"int8": {math.MinInt8, math.MaxInt8}, "int16": {math.MinInt16, math.MaxInt16},
	"int32": {math.MinInt32, math.MaxInt32},
}

var uintMax = map[string]uint64{"uint8": math.MaxUint8, "uint16": math.MaxUint16, "uint32": math.MaxUint32}

func builtin(typ, full, name string, v any) (any, *protocol.Error) {
	switch typ {
	case "int", "int64":
		n, ok := asInt64(v)
		if !ok {
			return nil, invalidType(full, "integer")
		}
		return n, nil
	case "int8", "int16", "int32":
		n, ok := asInt64(v)
		if !ok {
			return nil, invalidType(full, "integer")
		}
		if r := intRanges[typ]; n < r[0] || n > r[1] {
			return nil, invalidValue(bare(name), typ)
		}
		return n, nil
	case "uint64", "size":
		n, ok := asUint64(v)
		if !ok {
			return nil, invalidValue(full, "uint64")
		}
		return n, nil
	case "uint8", "uint16", "uint32":
		n, ok := asUint64(v)
		if !ok {
			return nil, invalidValue(full, "uint64")
		}
		if n > uintMax[typ] {
			return nil, invalidValue(bare(name), typ)
		}
		return n, nil
	case "str":
		s, ok := v.(string)
		if !ok {
			return nil, invalidType(full, "string")
		}
		return s, nil
	case "bool":
		b, ok := v.(bool)
		if !ok {
			return nil, invalidType(full, "boolean")
		}
		return b, nil
	case "number":
		switch n := v.(type) {
		case float64:
			return n, nil
		case uint64:
			return float64(n), nil
		}
		if n, ok := asInt64(v); ok {
			return float64(n), nil
		}
		return nil, invalidType(full, "number")
	case "null":
		if v != nil {
			return nil, invalidType(full, "null")
		}
		return nil, nil
	case "any":
		return v, nil
	}
	return nil, protocol.Errorf("Parameter '%s' has unsupported type %s", full, typ)
}

// Int returns the int argument name, if it was given.
func (a Args) Int(name string) (int64, bool) {
	n, ok := a[name].(int64)
	return n, ok
}

// String returns the str or enum argument name, if it was given.
func (a Args) String(name string) (string, bool) {
	s, ok := a[name].(string)
	return s, ok
}

// Bool returns the bool argument name, if it was given.
func (a Args) Bool(name string) (bool, bool) {
	b, ok := a[name].(bool)
	return b, ok
}

// Has reports whether the optional argument name was given.
func (a Args) Has(name string) bool {
	_, ok := a[name]
	return ok
}
