//go:build ignore

// gen.go writes zz_generated.go from qapi-schema.json: `go generate ./schema`.
//
// The generator imports package schema, so it runs only while zz_generated.go compiles. Should
// it not (after a change to what Generate writes), replace it with the empty table
//
//	package schema
//
//	var commands []*Command
//	var types []*Type
//
// and generate again.
package main

import (
	"fmt"
	"os"

	"github.com/qgakit/qgakit/schema/schemagen"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "schema/gen.go:", err)
		os.Exit(1)
	}
}

func run() error {
	doc, err := os.ReadFile("qapi-schema.json")
	if err != nil {
		return err
	}
	s, err := schemagen.Parse(string(doc))
	if err != nil {
		return err
	}
	src, err := schemagen.Generate(s, "qapi-schema.json")
	if err != nil {
		return err
	}
	return os.WriteFile("zz_generated.go", src, 0o644)
}
