package specs

import (
	"fmt"
	"slices"
	"strings"

	. "github.com/onsi/ginkgo/v2"
)

// requiredCoverage are the commands that must have specs by now. It grows with the suite until
// it is every command of the schema; a command in it without a spec fails the suite.
var requiredCoverage = []string{
	"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info",
}

// The coverage report reads the schema and the whole spec tree (specs filtered out by LABELS
// included) and names the commands no spec carries a cmd: label for.
var _ = ReportAfterSuite("command coverage", func(r Report) {
	covered := map[string]bool{}
	for _, s := range r.SpecReports {
		for _, l := range s.Labels() {
			if name, ok := strings.CutPrefix(l, "cmd:"); ok {
				covered[name] = true
			}
		}
	}
	var missing, required []string
	for _, name := range seeds.CommandNames() {
		if covered[name] {
			continue
		}
		missing = append(missing, name)
		if slices.Contains(requiredCoverage, name) {
			required = append(required, name)
		}
	}
	if len(missing) == 0 {
		fmt.Fprintf(GinkgoWriter, "coverage: every one of the %d schema commands has specs\n", len(seeds.Commands))
		return
	}
	fmt.Fprintf(GinkgoWriter, "coverage: %d of %d schema commands have no spec yet: %s\n",
		len(missing), len(seeds.Commands), strings.Join(missing, ", "))
	if len(required) > 0 {
		Fail("commands that must have specs have none: " + strings.Join(required, ", "))
	}
})
