// Package schema is the contract of the project: the guest agent's QAPI schema. The agent's
// dispatcher checks arguments against it and builds guest-info from it; the harness reads it
// to know which commands a conformant agent must have and which of them must have a spec.
//
// qapi-schema.json in this directory is a derived copy of the seed (../shared/spec): the same
// 23 commands, written in today's QAPI syntax and with the wire types of qemu-ga 7.2 (see the
// header of the file for the exact differences). The package does not parse it at run time:
// `go generate ./schema` runs schemagen, which parses it with go-qemu's QAPI parser and writes
// the result as Go values to zz_generated.go, so that the agent starts without parsing JSON
// and without the parser in its binary. The package's tests fail when the generated table and
// the parser's reading of the file differ.
package schema

//go:generate go run gen.go

import (
	"fmt"
	"sync"
)

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

// Builtins are the QAPI built-in types a schema may reference.
var Builtins = []string{"str", "bool", "number", "any", "null",
	"int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "size"}

var (
	loadOnce sync.Once
	loaded   *Schema
	loadErr  error
)

// Load returns the agent schema, built on first use from the generated table
// (zz_generated.go).
func Load() (*Schema, error) {
	loadOnce.Do(func() {
		byName := make(map[string]*Type, len(types)+len(Builtins))
		for _, t := range types {
			byName[t.Name] = t
		}
		loaded, loadErr = New(commands, byName)
	})
	return loaded, loadErr
}

// MustLoad is Load for callers that cannot go on without the schema (the generated table is
// checked by the package's tests, so a failure here is a build defect).
func MustLoad() *Schema {
	s, err := Load()
	if err != nil {
		panic(err)
	}
	return s
}

// New makes a schema of commands, in schema order, and the named types they use. The QAPI
// built-ins are added to types (which New keeps and extends); every type reference must
// resolve.
func New(commands []*Command, types map[string]*Type) (*Schema, error) {
	if types == nil {
		types = map[string]*Type{}
	}
	s := &Schema{Commands: commands, Types: types, byName: make(map[string]*Command, len(commands))}
	for _, b := range Builtins {
		if t, ok := types[b]; ok && t.Kind != Builtin {
			return nil, fmt.Errorf("type %s: redefines a QAPI built-in", b)
		}
		types[b] = &Type{Name: b, Kind: Builtin}
	}
	for _, c := range commands {
		if s.byName[c.Name] != nil {
			return nil, fmt.Errorf("command %s: defined twice", c.Name)
		}
		s.byName[c.Name] = c
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
