package specs

import (
	"fmt"
	"strings"

	. "github.com/onsi/ginkgo/v2"
)

// The coverage check reads the schema and the whole spec tree (specs filtered out by LABELS
// included) and fails the suite when a command of the schema has no spec carrying its cmd: label.
var _ = ReportAfterSuite("command coverage", func(r Report) {
	covered := map[string]bool{}
	for _, s := range r.SpecReports {
		for _, l := range s.Labels() {
			if name, ok := strings.CutPrefix(l, "cmd:"); ok {
				covered[name] = true
			}
		}
	}
	var missing []string
	for _, name := range seeds.CommandNames() {
		if !covered[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		Fail(fmt.Sprintf("%d of %d schema commands have no spec: %s",
			len(missing), len(seeds.Commands), strings.Join(missing, ", ")))
	}
	fmt.Fprintf(GinkgoWriter, "coverage: every one of the %d schema commands has specs\n", len(seeds.Commands))
})
