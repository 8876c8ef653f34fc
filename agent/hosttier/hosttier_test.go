package hosttier

import (
	"os"
	"testing"
)

// cases is the conformance table; each cases_*_test.go file adds its group from init.
var cases []Case

func TestMain(m *testing.M) {
	if _, err := os.Stat(Ours().Bin); err != nil {
		// make test builds it; a bare go test without it would only report noise.
		println("hosttier: " + Ours().Bin + " missing: run make agent (or set QGA_BIN)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func TestConformance(t *testing.T) {
	for _, a := range Agents() {
		t.Run(a.Name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.Name, func(t *testing.T) {
					t.Parallel()
					c.Run(t, a)
				})
			}
		})
	}
}
