package schema

import (
	"slices"
	"testing"
)

// The seed defines exactly these 23 commands; the derived copy must not lose or add one.
var seedCommands = []string{
	"guest-sync-delimited", "guest-sync", "guest-ping", "guest-get-time", "guest-set-time",
	"guest-info", "guest-shutdown", "guest-file-open", "guest-file-close", "guest-file-read",
	"guest-file-write", "guest-file-seek", "guest-file-flush", "guest-fsfreeze-status",
	"guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fstrim", "guest-suspend-disk",
	"guest-suspend-ram", "guest-suspend-hybrid", "guest-network-get-interfaces",
	"guest-get-vcpus", "guest-set-vcpus",
}

func TestLoadHasTheSeedCommands(t *testing.T) {
	s, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CommandNames(); !slices.Equal(got, seedCommands) {
		t.Fatalf("commands:\n got %v\nwant %v", got, seedCommands)
	}
}

func TestSuccessResponse(t *testing.T) {
	s := MustLoad()
	noReply := []string{"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"}
	for _, c := range s.Commands {
		if want := !slices.Contains(noReply, c.Name); c.SuccessResponse != want {
			t.Errorf("%s: success-response %v, want %v", c.Name, c.SuccessResponse, want)
		}
	}
}

func TestWireTypesOf72(t *testing.T) {
	s := MustLoad()
	seek := s.Command("guest-file-seek")
	if w := seek.Args[2]; w.Name != "whence" || w.Type.Name != "GuestFileWhence" {
		t.Errorf("guest-file-seek whence: %+v", w)
	}
	if alt := s.Types["GuestFileWhence"]; alt.Kind != Alternate || len(alt.Alternatives) != 2 {
		t.Errorf("GuestFileWhence: %+v", alt)
	}
	if r := s.Command("guest-fstrim").Returns; r == nil || r.Name != "GuestFilesystemTrimResponse" {
		t.Errorf("guest-fstrim returns %v", r)
	}
	if got := s.Types["QGASeek"].Values; !slices.Equal(got, []string{"set", "cur", "end"}) {
		t.Errorf("QGASeek: %v", got)
	}
}

// New refuses what the dispatcher could not use: a reference to a type that does not exist,
// a command defined twice, a named type that shadows a built-in.
func TestNewRefusesBrokenSchemas(t *testing.T) {
	str := TypeRef{Name: "str"}
	for name, c := range map[string]struct {
		commands []*Command
		types    map[string]*Type
	}{
		"unknown argument type": {commands: []*Command{{Name: "a", Args: []Member{{Name: "x", Type: TypeRef{Name: "Nope"}}}}}},
		"unknown return type":   {commands: []*Command{{Name: "a", Returns: &TypeRef{Name: "Nope", List: true}}}},
		"unknown member type": {types: map[string]*Type{
			"S": {Name: "S", Kind: Struct, Members: []Member{{Name: "m", Type: TypeRef{Name: "Nope"}}}}}},
		"unknown alternative": {types: map[string]*Type{
			"A": {Name: "A", Kind: Alternate, Alternatives: []Alternative{{Name: "v", Type: TypeRef{Name: "Nope"}}}}}},
		"command twice":      {commands: []*Command{{Name: "a"}, {Name: "a"}}},
		"built-in redefined": {types: map[string]*Type{"int": {Name: "int", Kind: Struct, Members: []Member{{Name: "m", Type: str}}}}},
	} {
		if _, err := New(c.commands, c.types); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s, err := New([]*Command{{Name: "a", Args: []Member{{Name: "x", Type: str}}}}, nil)
	if err != nil || s.Command("a") == nil || s.Types["str"] == nil || s.Types["size"].Kind != Builtin {
		t.Fatalf("a valid schema: %v, %+v", err, s)
	}
}
