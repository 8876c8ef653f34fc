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

func TestParseRefusesWhatItCannotRead(t *testing.T) {
	if _, err := Parse("{ 'command': 'a' }\n{ 'command': 'b', 'success-response': 'no' }\n"); err == nil {
		t.Fatal("a definition the parser skipped went unnoticed")
	}
	if _, err := Parse("{ 'command': 'a', 'data': { 'x': 'Nope' } }\n"); err == nil {
		t.Fatal("an unknown type went unnoticed")
	}
}
