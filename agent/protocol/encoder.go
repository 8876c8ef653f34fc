package protocol

import (
	"encoding/base64"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// The encoder writes what qemu-ga's qobject_to_json() writes: compact JSON with ", " and ": "
// separators, pure-ASCII strings escaped like json-writer.c quoted_str(), integers in decimal,
// doubles as "%.17g", and object members in QDict order (see qdict.go), so that replies are
// byte-identical to the reference's.

// Base64 is a byte string that goes on the wire as the JSON string of its standard, padded
// base64 encoding, as guest-file-read's buf-b64 does. It exists so that a 48 MiB read never
// needs its 64 MiB encoding in memory: WriteResponse encodes it piece by piece straight into
// the writer, and AppendValue appends the same text in one go.
type Base64 []byte

// Releaser is a reply value that holds memory outside the Go heap, such as the mapped buffer
// of a large guest-file-read: whoever writes the reply calls Release once it is written (the
// server does), and the value must not be used after that. A Releaser that is never released
// keeps its memory until the process exits.
type Releaser interface {
	Release()
}

// MarshalJSON encodes b as AppendValue does; a nil Base64 is "", never null.
func (b Base64) MarshalJSON() ([]byte, error) {
	return AppendValue(nil, b), nil
}

// AppendResponse appends one framed reply to dst: the optional 0xFF sentinel, the compact
// JSON object and "\n".
func AppendResponse(dst []byte, r *Response) []byte {
	return appendResponse(dst, r, nil)
}

// streamChunk is the size of the pieces WriteResponse hands to its writer while it encodes a
// Base64 value: large enough that a 64 MiB reply costs a few hundred writes, small enough
// that the reply never costs memory in proportion to its size.
const streamChunk = 128 << 10

// chunkSlack is room beyond a full piece for what follows the value (the rest of the reply),
// so that appending it does not reallocate the buffer.
const chunkSlack = 4 << 10

// scratch holds the buffers WriteResponse encodes into, between replies.
var scratch = sync.Pool{New: func() any { return new([]byte) }}

// WriteResponse writes one framed reply to w: exactly the bytes AppendResponse would append,
// but Base64 values are encoded in pieces of at most streamChunk bytes that go to w as they
// are made, so the memory it needs does not grow with them. A reply without a Base64 value is
// written with one call to w. It returns the number of bytes w accepted and the first error
// of w, after which nothing more is written.
func WriteResponse(w io.Writer, r *Response) (int64, error) {
	p := scratch.Get().(*[]byte)
	s := &sink{w: w}
	buf := s.flush(appendResponse((*p)[:0], r, s))
	// A reply with a large value other than Base64 grew the buffer; it is not kept.
	if cap(buf) <= 2*streamChunk {
		*p = buf
		scratch.Put(p)
	}
	return s.n, s.err
}

// ResponseSize is the length of the reply AppendResponse would make, worked out without
// encoding any Base64 value (the debug log reports a reply's size before it is sent).
func ResponseSize(r *Response) int64 {
	s := &sink{w: io.Discard, measure: true}
	s.flush(appendResponse(nil, r, s))
	return s.n
}

// sink is where a streamed reply goes; a nil *sink means the whole reply is appended to the
// buffer.
type sink struct {
	w   io.Writer
	n   int64 // bytes written, or counted when measuring
	err error
	// measure counts the encoded size of Base64 values instead of encoding them.
	measure bool
}

// flush writes dst and returns it emptied for reuse.
func (s *sink) flush(dst []byte) []byte {
	if s.err == nil && len(dst) > 0 {
		n, err := s.w.Write(dst)
		s.n += int64(n)
		if err == nil && n < len(dst) {
			err = io.ErrShortWrite
		}
		s.err = err
	}
	return dst[:0]
}

// appendBase64 appends b as a JSON string of its base64 encoding, or with a sink, streams it:
// the buffer is filled with whole base64 quanta and flushed until b is used up.
func appendBase64(dst, b []byte, s *sink) []byte {
	enc := base64.StdEncoding
	if s == nil {
		dst = slices.Grow(dst, enc.EncodedLen(len(b))+2)
		dst = append(dst, '"')
		return append(enc.AppendEncode(dst, b), '"')
	}
	dst = append(dst, '"')
	if s.measure {
		s.n += int64(enc.EncodedLen(len(b)))
		return append(dst, '"')
	}
	for len(b) > 0 && s.err == nil {
		room := (streamChunk - len(dst)) / 4 * 3
		if room < streamChunk/4 {
			dst = s.flush(dst)
			if cap(dst) < streamChunk+chunkSlack {
				dst = make([]byte, 0, streamChunk+chunkSlack)
			}
			room = streamChunk / 4 * 3
		}
		k := min(room, len(b))
		dst = enc.AppendEncode(dst, b[:k])
		b = b[k:]
	}
	return append(dst, '"')
}

func appendResponse(dst []byte, r *Response, s *sink) []byte {
	if r.Delimited {
		dst = append(dst, 0xFF)
	}
	dst = append(dst, '{')
	idFirst := r.HasID && (r.Err == nil && idBeforeReturn || r.Err != nil && idBeforeError)
	if idFirst {
		dst = append(dst, `"id": `...)
		dst = appendValue(dst, r.ID, s)
		dst = append(dst, ", "...)
	}
	if r.Err != nil {
		dst = append(dst, `"error": {`...)
		for i, k := range errorKeys {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendString(dst, k)
			dst = append(dst, ": "...)
			if k == "class" {
				dst = appendString(dst, r.Err.Class)
			} else {
				dst = appendString(dst, r.Err.Desc)
			}
		}
		dst = append(dst, '}')
	} else {
		dst = append(dst, `"return": `...)
		if r.Return == nil {
			dst = append(dst, "{}"...)
		} else {
			dst = appendValue(dst, r.Return, s)
		}
	}
	if r.HasID && !idFirst {
		dst = append(dst, `, "id": `...)
		dst = appendValue(dst, r.ID, s)
	}
	return append(dst, "}\n"...)
}

// Where "id" goes in a reply, by QDict order.
var (
	idBeforeReturn = qdictBucket("id") < qdictBucket("return")
	idBeforeError  = qdictBucket("id") < qdictBucket("error")
)

// errorKeys are the members of an error object in QDict order.
var errorKeys = func() []string {
	k := []string{"class", "desc"}
	sortQDictKeys(k)
	return k
}()

// AppendValue appends v as JSON in the reference's style: ", " and ": " separators, pure ASCII.
// v may be any decoded value type, int, int32, uint32, a struct with json tags (name and
// omitempty), a pointer, a slice or a map with string keys.
//
// More precisely: nil, bools, strings, every integer and float type (NaN and infinities print
// as glibc does, "nan", "inf", "-inf", which is not JSON but is what the reference sends),
// []any, map[string]any, and through reflection any named type of those kinds, pointers (nil
// is null), interfaces, arrays and slices (nil is [], as QAPI lists are never null), maps with
// string keys (nil is {}), and structs. Struct fields follow encoding/json's rules: exported
// fields, `json:"name"`, `json:",omitempty"`, `json:"-"`, and embedded structs without a name
// are flattened. Object members come in the reference's QDict order, not in field or key
// order. Other types (channels, functions, complex numbers, maps with other keys) panic: they
// are programming errors. A Base64 value is the JSON string of its base64 encoding.
func AppendValue(dst []byte, v any) []byte {
	return appendValue(dst, v, nil)
}

func appendValue(dst []byte, v any, s *sink) []byte {
	switch v := v.(type) {
	case nil:
		return append(dst, "null"...)
	case string:
		return appendString(dst, v)
	case bool:
		return strconv.AppendBool(dst, v)
	case int64:
		return strconv.AppendInt(dst, v, 10)
	case int:
		return strconv.AppendInt(dst, int64(v), 10)
	case int32:
		return strconv.AppendInt(dst, int64(v), 10)
	case uint64:
		return strconv.AppendUint(dst, v, 10)
	case uint32:
		return strconv.AppendUint(dst, uint64(v), 10)
	case float64:
		return appendFloat(dst, v)
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sortQDictKeys(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendString(dst, k)
			dst = append(dst, ": "...)
			dst = appendValue(dst, v[k], s)
		}
		return append(dst, '}')
	case []any:
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendValue(dst, e, s)
		}
		return append(dst, ']')
	case Base64:
		return appendBase64(dst, v, s)
	case []string:
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendString(dst, e)
		}
		return append(dst, ']')
	}
	return appendReflect(dst, reflect.ValueOf(v), s)
}

// base64Type is the type of Base64, which reflection would otherwise see as a list of numbers.
var base64Type = reflect.TypeFor[Base64]()

func appendReflect(dst []byte, rv reflect.Value, s *sink) []byte {
	switch rv.Kind() {
	case reflect.Invalid:
		return append(dst, "null"...)
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return append(dst, "null"...)
		}
		return appendReflect(dst, rv.Elem(), s)
	case reflect.Bool:
		return strconv.AppendBool(dst, rv.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(dst, rv.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.AppendUint(dst, rv.Uint(), 10)
	case reflect.Float32, reflect.Float64:
		return appendFloat(dst, rv.Float())
	case reflect.String:
		return appendString(dst, rv.String())
	case reflect.Slice, reflect.Array:
		if rv.Type() == base64Type {
			return appendBase64(dst, rv.Bytes(), s)
		}
		dst = append(dst, '[')
		for i := 0; i < rv.Len(); i++ {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendReflect(dst, rv.Index(i), s)
		}
		return append(dst, ']')
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			panic(fmt.Sprintf("protocol: cannot encode %s: map keys must be strings", rv.Type()))
		}
		keys := make([]string, 0, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			keys = append(keys, it.Key().String())
		}
		sortQDictKeys(keys)
		dst = append(dst, '{')
		kt := rv.Type().Key()
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendString(dst, k)
			dst = append(dst, ": "...)
			dst = appendReflect(dst, rv.MapIndex(reflect.ValueOf(k).Convert(kt)), s)
		}
		return append(dst, '}')
	case reflect.Struct:
		dst = append(dst, '{')
		first := true
		for _, f := range structFields(rv.Type()) {
			fv, ok := fieldByIndex(rv, f.index)
			if !ok || (f.omitEmpty && isEmpty(fv)) {
				continue
			}
			if !first {
				dst = append(dst, ", "...)
			}
			first = false
			dst = append(dst, f.prefix...)
			dst = appendReflect(dst, fv, s)
		}
		return append(dst, '}')
	}
	panic(fmt.Sprintf("protocol: cannot encode %s", rv.Type()))
}

// field is one JSON member of a struct type.
type field struct {
	prefix    string // `"name": `
	index     []int
	omitEmpty bool
}

var fieldCache sync.Map // reflect.Type -> []field

// structFields lists t's JSON members in the order a QDict prints them: by bucket, and within a
// bucket the last inserted first. The QAPI output visitor inserts members in declaration
// order, which struct fields are expected to follow.
func structFields(t reflect.Type) []field {
	if f, ok := fieldCache.Load(t); ok {
		return f.([]field)
	}
	type named struct {
		name string
		f    field
	}
	var list []named
	seen := map[string]bool{}
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(slices.Clip(index), i)
			ft := sf.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if sf.Anonymous && name == "" && ft.Kind() == reflect.Struct {
				walk(ft, idx)
				continue
			}
			if !sf.IsExported() {
				continue
			}
			if name == "" {
				name = sf.Name
			}
			if seen[name] {
				continue
			}
			seen[name] = true
			omit := false
			for _, o := range strings.Split(opts, ",") {
				omit = omit || o == "omitempty"
			}
			list = append(list, named{name, field{
				prefix:    string(appendString(nil, name)) + ": ",
				index:     idx,
				omitEmpty: omit,
			}})
		}
	}
	walk(t, nil)
	order := make([]int, len(list))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ba, bb := qdictBucket(list[a].name), qdictBucket(list[b].name)
		if ba != bb {
			return int(ba) - int(bb)
		}
		return b - a // later insertion first
	})
	fields := make([]field, len(list))
	for i, o := range order {
		fields[i] = list[o].f
	}
	f, _ := fieldCache.LoadOrStore(t, fields)
	return f.([]field)
}

// fieldByIndex is rv.FieldByIndex that reports a nil embedded pointer instead of panicking.
func fieldByIndex(rv reflect.Value, index []int) (reflect.Value, bool) {
	for i, x := range index {
		if i > 0 && rv.Kind() == reflect.Pointer {
			if rv.IsNil() {
				return reflect.Value{}, false
			}
			rv = rv.Elem()
		}
		rv = rv.Field(x)
	}
	return rv, true
}

// isEmpty is encoding/json's omitempty test.
func isEmpty(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Bool:
		return !v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return v.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return v.Float() == 0
	case reflect.Interface, reflect.Pointer:
		return v.IsNil()
	}
	return false
}

// appendFloat is printf("%.17g") as glibc does it.
func appendFloat(dst []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(dst, "inf"...)
	case math.IsInf(f, -1):
		return append(dst, "-inf"...)
	case math.IsNaN(f):
		if math.Signbit(f) {
			return append(dst, "-nan"...)
		}
		return append(dst, "nan"...)
	}
	return strconv.AppendFloat(dst, f, 'g', 17, 64)
}

// plainASCII marks the bytes quoted_str() copies as they are.
var plainASCII = func() (t [256]bool) {
	for c := 0x20; c < 0x7F; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const hexDigits = "0123456789ABCDEF"

// appendString appends s quoted as json-writer.c quoted_str() does: short escapes for
// \" \\ \b \f \n \r \t, \uXXXX (uppercase) for every other code point below 0x20 or from 0x7F,
// surrogate pairs beyond the BMP, and \uFFFD for each invalid modified-UTF-8 sequence. A NUL
// byte, which a C string cannot hold, is written as \u0000 (how the reference writes the
// modified-UTF-8 NUL that \u0000 decodes to).
//
// Runs of plain ASCII are copied in one piece, found eight bytes at a time: a 64 MiB base64
// payload is scanned at memory speed and copied once.
func appendString(dst []byte, s string) []byte {
	if len(s) >= 4<<10 {
		// Room for the whole string plus the rest of a typical reply, so the buffer grows once.
		dst = slices.Grow(dst, len(s)+512)
	}
	dst = append(dst, '"')
	run := 0 // start of the plain run not yet copied
	i := 0
	for i < len(s) {
		i = skipPlain(s, i)
		if i >= len(s) {
			break
		}
		c := s[i]
		if plainASCII[c] {
			i++
			continue
		}
		dst = append(dst, s[run:i]...)
		switch c {
		case '"':
			dst = append(dst, `\"`...)
		case '\\':
			dst = append(dst, `\\`...)
		case '\b':
			dst = append(dst, `\b`...)
		case '\f':
			dst = append(dst, `\f`...)
		case '\n':
			dst = append(dst, `\n`...)
		case '\r':
			dst = append(dst, `\r`...)
		case '\t':
			dst = append(dst, `\t`...)
		default:
			if c < 0x80 {
				dst = appendU(dst, int32(c))
				i++
				run = i
				continue
			}
			cp, size := modUTF8(s[i:])
			i += size
			run = i
			switch {
			case cp < 0:
				dst = appendU(dst, 0xFFFD)
			case cp > 0xFFFF:
				dst = appendU(dst, 0xD800+(cp-0x10000)>>10)
				dst = appendU(dst, 0xDC00+(cp-0x10000)&0x3FF)
			default:
				dst = appendU(dst, cp)
			}
			continue
		}
		i++
		run = i
	}
	dst = append(dst, s[run:]...)
	return append(dst, '"')
}

// skipPlain returns the end of the run of plain ASCII from s[i] (no byte below 0x20 or from
// 0x7F, no quote, no backslash), looking at sixteen bytes at a time. It may stop early, before
// a block holding a byte to escape; the caller then goes on byte by byte.
func skipPlain(s string, i int) int {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	bad := func(x uint64) uint64 {
		// x itself flags bytes from 0x80, x+1 flags 0x7F (exact once no byte is from 0x80),
		// and the borrow of x-0x20 flags bytes below 0x20.
		return (x|(x+ones)|(x-0x20*ones)&^x)&high |
			hasZero(x^'"'*ones) |
			hasZero(x^'\\'*ones)
	}
	for i+16 <= len(s) {
		b := s[i : i+16]
		x := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
		y := uint64(b[8]) | uint64(b[9])<<8 | uint64(b[10])<<16 | uint64(b[11])<<24 |
			uint64(b[12])<<32 | uint64(b[13])<<40 | uint64(b[14])<<48 | uint64(b[15])<<56
		if bad(x)|bad(y) != 0 {
			break
		}
		i += 16
	}
	return i
}

// appendU appends \uXXXX with uppercase hex digits.
func appendU(dst []byte, cp int32) []byte {
	return append(dst, '\\', 'u', hexDigits[cp>>12&0xF], hexDigits[cp>>8&0xF], hexDigits[cp>>4&0xF],
		hexDigits[cp&0xF])
}
