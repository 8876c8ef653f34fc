package dispatch

import (
	"context"
	"fmt"
	"testing"

	"github.com/qgakit/qgakit/agent/dispatch/reftest"
	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/schema"
)

// FuzzDispatch feeds arbitrary decoded JSON values to the dispatcher: it must never panic,
// must answer every message with one well-formed reply (or with none only for a successful
// command without success-response), echo the id exactly when the request object has one, and
// hand handlers arguments of the documented Go types.
func FuzzDispatch(f *testing.F) {
	for _, c := range requestCases {
		f.Add([]byte(c.req))
	}
	for _, c := range argCases {
		f.Add([]byte(c.req))
	}
	s := schema.MustLoad()
	var got Args
	var called string
	var frozen bool
	d := New(s, Options{Blocked: []string{"guest-get-time"}, Frozen: func() bool { return frozen }})
	for _, c := range s.Commands {
		name := c.Name
		d.Register(name, func(_ context.Context, a Args) (any, error) {
			got, called = a, name
			if name == "guest-sync-delimited" {
				return Delimited{Value: a["id"]}, nil
			}
			return a, nil
		})
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := reftest.Decode(data)
		if err != nil {
			return
		}
		got, called, frozen = nil, "", len(data)%3 == 0
		resp, reply := d.Dispatch(context.Background(), protocol.Message{Value: v})

		obj, isObj := v.(map[string]any)
		id, hasID := obj["id"]
		if !reply {
			c := s.Command(called)
			if c == nil || c.SuccessResponse || resp != (protocol.Response{}) {
				t.Fatalf("%s: no reply after %q ran (%+v)", data, called, resp)
			}
			return
		}
		if resp.HasID != (isObj && hasID) || (hasID && fmt.Sprint(resp.ID) != fmt.Sprint(id)) {
			t.Fatalf("%s: id %v/%v, request had %v/%v", data, resp.ID, resp.HasID, id, hasID)
		}
		if resp.Err != nil {
			if resp.Err.Class != protocol.ClassGenericError && resp.Err.Class != protocol.ClassCommandNotFound {
				t.Fatalf("%s: error class %q", data, resp.Err.Class)
			}
			if resp.Err.Desc == "" {
				t.Fatalf("%s: empty error text", data)
			}
			if called != "" {
				t.Fatalf("%s: %s ran but the reply is an error: %v", data, called, resp.Err)
			}
			return
		}
		c := s.Command(called)
		if c == nil || obj["execute"] != called {
			t.Fatalf("%s: success without a handler run (%q)", data, called)
		}
		if resp.Delimited != (called == "guest-sync-delimited") {
			t.Fatalf("%s: Delimited=%v for %s", data, resp.Delimited, called)
		}
		if err := checkShape(s, c.Args, got); err != nil {
			t.Fatalf("%s: %s got %#v: %v", data, called, got, err)
		}
	})
}

// checkShape verifies the Args contract independently of the checker that built the value.
func checkShape(s *schema.Schema, members []schema.Member, a Args) error {
	known := map[string]bool{}
	for _, m := range members {
		known[m.Name] = true
		v, ok := a[m.Name]
		if !ok {
			if !m.Optional {
				return fmt.Errorf("mandatory %s absent", m.Name)
			}
			continue
		}
		if err := shape(s, m.Type, v); err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
	}
	for k := range a {
		if !known[k] {
			return fmt.Errorf("member %s is not in the schema", k)
		}
	}
	return nil
}

func shape(s *schema.Schema, t schema.TypeRef, v any) error {
	if t.List {
		l, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%T for a list", v)
		}
		for i, e := range l {
			if err := shape(s, schema.TypeRef{Name: t.Name}, e); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return nil
	}
	typ := s.Types[t.Name]
	switch typ.Kind {
	case schema.Struct:
		a, ok := v.(Args)
		if !ok {
			return fmt.Errorf("%T for struct %s", v, t.Name)
		}
		return checkShape(s, typ.Members, a)
	case schema.Enum:
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%T for enum %s", v, t.Name)
		}
		for _, ev := range typ.Values {
			if ev == str {
				return nil
			}
		}
		return fmt.Errorf("%q is not a %s", str, t.Name)
	case schema.Alternate:
		for _, alt := range typ.Alternatives {
			if shape(s, alt.Type, v) == nil {
				return nil
			}
		}
		return fmt.Errorf("%#v matches no branch of %s", v, t.Name)
	}
	var ok bool
	switch t.Name {
	case "int", "int8", "int16", "int32", "int64":
		_, ok = v.(int64)
	case "uint8", "uint16", "uint32", "uint64", "size":
		_, ok = v.(uint64)
	case "str":
		_, ok = v.(string)
	case "bool":
		_, ok = v.(bool)
	case "number":
		_, ok = v.(float64)
	case "null":
		ok = v == nil
	case "any":
		ok = true
	}
	if !ok {
		return fmt.Errorf("%T for %s", v, t.Name)
	}
	return nil
}
