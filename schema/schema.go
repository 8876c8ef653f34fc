// Package schema is the contract of the project: the guest agent's QAPI schema, embedded and
// parsed once. The agent's dispatcher checks arguments against it and builds guest-info from it;
// the harness reads it to know which commands a conformant agent must have and which of them
// must have a spec.
//
// The embedded qapi-schema.json is a derived copy of the seed (../shared/spec): the same 23
// commands, written in today's QAPI syntax and with the wire types of qemu-ga 7.2 (see the
// header of the file for the exact differences).
package schema

import (
	_ "embed"
	"fmt"
	"regexp"
	"sync"

	qapi "github.com/digitalocean/go-qemu/qapi-schema"
)

//go:embed qapi-schema.json
var raw string

// Kind says what a named QAPI type is.
type Kind int

// The kinds of QAPI type the agent schema uses.
const (
	Builtin Kind = iota
	Struct
	Enum
	Alternate
)

// TypeRef names a type, or a list of it when List is set.
type TypeRef struct {
	Name string
	List bool
}

// String renders the reference the way QAPI writes it: "int" or "['GuestIpAddress']".
func (r TypeRef) String() string {
	if r.List {
		return "['" + r.Name + "']"
	}
	return r.Name
}

// Member is one field of a struct or one argument of a command.
type Member struct {
	Name     string
	Type     TypeRef
	Optional bool
}

// Alternative is one branch of an alternate type.
type Alternative struct {
	Name string
	Type TypeRef
}

// Type is a named type of the schema or a QAPI built-in.
type Type struct {
	Name         string
	Kind         Kind
	Members      []Member      // Struct
	Values       []string      // Enum
	Alternatives []Alternative // Alternate
}

// Command is one command of the schema.
type Command struct {
	Name    string
	Args    []Member
	Returns *TypeRef // nil: the command returns an empty object
	// SuccessResponse is false for the commands that send nothing when they succeed
	// (guest-shutdown and the guest-suspend-* commands).
	SuccessResponse bool
}

// Schema is the parsed agent schema.
type Schema struct {
	// Commands in schema order.
	Commands []*Command
	// Types by name, the QAPI built-ins (int, str, bool, ...) included.
	Types map[string]*Type

	byName map[string]*Command
}

// Command returns the named command, or nil when the schema has no such command.
func (s *Schema) Command(name string) *Command { return s.byName[name] }

// CommandNames returns the command names in schema order.
func (s *Schema) CommandNames() []string {
	names := make([]string, len(s.Commands))
	for i, c := range s.Commands {
		names[i] = c.Name
	}
	return names
}

// builtins are the QAPI built-in types the schema may reference.
var builtins = []string{"str", "bool", "number", "any", "null",
	"int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "size"}

var (
	loadOnce sync.Once
	loaded   *Schema
	loadErr  error
)

// Load returns the embedded schema, parsed on first use.
func Load() (*Schema, error) {
	loadOnce.Do(func() { loaded, loadErr = Parse(raw) })
	return loaded, loadErr
}

// MustLoad is Load for callers that cannot go on without the schema (the embedded copy is
// checked by the package's tests, so a failure here is a build defect).
func MustLoad() *Schema {
	s, err := Load()
	if err != nil {
		panic(err)
	}
	return s
}

// topLevel matches the opening of each definition, to check that the parser read them all:
// go-qemu's parser stops quietly at the first construct it does not know.
var topLevel = regexp.MustCompile(`(?m)^\{\s*'(command|struct|enum|alternate|union|event|include|pragma)'`)

// Parse parses a QAPI schema document.
func Parse(doc string) (*Schema, error) {
	tree, err := qapi.Parse(doc)
	if err != nil {
		return nil, fmt.Errorf("parse agent schema: %w", err)
	}
	if want := len(topLevel.FindAllStringIndex(doc, -1)); len(tree.Children) != want {
		return nil, fmt.Errorf("parse agent schema: read %d of %d definitions", len(tree.Children), want)
	}
	s := &Schema{Types: map[string]*Type{}, byName: map[string]*Command{}}
	for _, b := range builtins {
		s.Types[b] = &Type{Name: b, Kind: Builtin}
	}
	for _, child := range tree.Children {
		switch n := child.Node.(type) {
		case *qapi.Command:
			c := &Command{Name: n.Name, SuccessResponse: n.SuccessResponse == nil || *n.SuccessResponse}
			if n.Data.Ref != nil {
				return nil, fmt.Errorf("command %s: boxed argument types are not supported", n.Name)
			}
			if n.Data.Embed != nil {
				c.Args = members(n.Data.Embed.Members)
			}
			if n.Returns != nil {
				r := ref(*n.Returns)
				c.Returns = &r
			}
			s.Commands = append(s.Commands, c)
			s.byName[c.Name] = c
		case *qapi.Struct:
			s.Types[n.Name] = &Type{Name: n.Name, Kind: Struct, Members: members(n.Members)}
		case *qapi.Enum:
			t := &Type{Name: n.Name, Kind: Enum}
			for _, v := range n.Values {
				t.Values = append(t.Values, v.Value)
			}
			s.Types[n.Name] = t
		case *qapi.Alternate:
			t := &Type{Name: n.Name, Kind: Alternate}
			for _, a := range n.Data {
				t.Alternatives = append(t.Alternatives, Alternative{Name: a.Name, Type: ref(a.Type)})
			}
			s.Types[n.Name] = t
		default:
			return nil, fmt.Errorf("parse agent schema: unsupported definition %T", n)
		}
	}
	return s, s.check()
}

// check makes sure every reference resolves, so the dispatcher never meets an unknown type.
func (s *Schema) check() error {
	resolve := func(where string, r TypeRef) error {
		if _, ok := s.Types[r.Name]; !ok {
			return fmt.Errorf("%s: unknown type %s", where, r)
		}
		return nil
	}
	for _, c := range s.Commands {
		for _, m := range c.Args {
			if err := resolve(c.Name+"."+m.Name, m.Type); err != nil {
				return err
			}
		}
		if c.Returns != nil {
			if err := resolve(c.Name+" returns", *c.Returns); err != nil {
				return err
			}
		}
	}
	for _, t := range s.Types {
		for _, m := range t.Members {
			if err := resolve(t.Name+"."+m.Name, m.Type); err != nil {
				return err
			}
		}
		for _, a := range t.Alternatives {
			if err := resolve(t.Name+"."+a.Name, a.Type); err != nil {
				return err
			}
		}
	}
	return nil
}

func members(ms []qapi.Member) []Member {
	out := make([]Member, len(ms))
	for i, m := range ms {
		out[i] = Member{Name: m.Name, Type: ref(m.Type), Optional: m.Optional}
	}
	return out
}

func ref(r qapi.TypeRef) TypeRef {
	if r.TypeArray != "" {
		return TypeRef{Name: string(r.TypeArray), List: true}
	}
	return TypeRef{Name: r.Type}
}
