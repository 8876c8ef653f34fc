package schema_test

import (
	"bytes"
	"os"
	"reflect"
	"testing"

	"github.com/qgakit/qgakit/schema"
	"github.com/qgakit/qgakit/schema/schemagen"
)

// The generated table is what the parser reads from qapi-schema.json today, value for value
// (nil and empty lists apart, order of commands and members included), and zz_generated.go is
// byte for byte what the generator writes for it: an edit of the JSON, of the generator or of
// the generated file without `go generate ./schema` fails here.
func TestGeneratedTableIsTheParsedSchema(t *testing.T) {
	doc, err := os.ReadFile("qapi-schema.json")
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := schemagen.Parse(string(doc))
	if err != nil {
		t.Fatal(err)
	}
	loaded := schema.MustLoad()
	if !reflect.DeepEqual(parsed, loaded) {
		for i, c := range parsed.Commands {
			if i >= len(loaded.Commands) || !reflect.DeepEqual(c, loaded.Commands[i]) {
				t.Errorf("command %d: parsed %+v", i, c)
			}
		}
		for name, typ := range parsed.Types {
			if !reflect.DeepEqual(typ, loaded.Types[name]) {
				t.Errorf("type %s: parsed %+v, generated %+v", name, typ, loaded.Types[name])
			}
		}
		t.Fatalf("the generated table differs from the parsed schema (%d/%d commands, %d/%d types): run go generate ./schema",
			len(loaded.Commands), len(parsed.Commands), len(loaded.Types), len(parsed.Types))
	}
	want, err := schemagen.Generate(parsed, "qapi-schema.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("zz_generated.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("zz_generated.go is not what the generator writes for qapi-schema.json: run go generate ./schema")
	}
}
