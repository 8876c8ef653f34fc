// Package dist holds the files a distribution installs beside the agent: a systemd unit and a
// udev rule equivalent to Debian's qemu-guest-agent packaging, which start the agent when QEMU
// adds its virtio-serial port and stop it when the port goes away. They are embedded so that
// an image builder installs exactly the files packagers ship; README.md says where they go.
package dist

import _ "embed" // for the files below

// Where the files go, as Debian's qemu-guest-agent package installs them. systemd and udev
// also read /usr/lib/..., which is the same directory on merged-/usr systems.
const (
	// AgentPath is where the unit runs the agent from: our bin/qga installs there under the
	// reference's name, as a drop-in replacement.
	AgentPath = "/usr/sbin/qemu-ga"
	// UnitName is the unit's name; the udev rule asks for it by this name.
	UnitName = "qemu-guest-agent.service"
	// UnitPath is where the unit is installed.
	UnitPath = "/lib/systemd/system/" + UnitName
	// UdevRuleName is the rule file's name.
	UdevRuleName = "60-qemu-guest-agent.rules"
	// UdevRulePath is where the rule is installed.
	UdevRulePath = "/lib/udev/rules.d/" + UdevRuleName
)

// Unit is the contents of qemu-guest-agent.service.
//
//go:embed qemu-guest-agent.service
var Unit string

// UdevRule is the contents of 60-qemu-guest-agent.rules.
//
//go:embed 60-qemu-guest-agent.rules
var UdevRule string
