package specs

import (
	"errors"
	"fmt"

	"github.com/onsi/gomega/types"

	"github.com/qgakit/qgakit/harness/qga"
)

// MatchAgentError succeeds for an error reply of the agent with exactly this class and desc.
// Class and desc are what clients (libvirt, Proxmox) show and branch on, so both must match.
func MatchAgentError(class, desc string) types.GomegaMatcher {
	return &agentErrorMatcher{class: class, desc: desc}
}

type agentErrorMatcher struct{ class, desc string }

func (m *agentErrorMatcher) Match(actual any) (bool, error) {
	err, ok := actual.(error)
	if !ok || err == nil {
		return false, nil
	}
	var e *qga.Error
	if !errors.As(err, &e) {
		return false, nil
	}
	return e.Class == m.class && (m.desc == "" || e.Desc == m.desc), nil
}

func (m *agentErrorMatcher) FailureMessage(actual any) string {
	return fmt.Sprintf("Expected the agent error {class: %q, desc: %q}\ngot: %v", m.class, m.desc, actual)
}

func (m *agentErrorMatcher) NegatedFailureMessage(actual any) string {
	return fmt.Sprintf("Expected anything but the agent error {class: %q, desc: %q}", m.class, m.desc)
}
