package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/qmp"
)

// The agent channel's names: the port name is what agents open
// (/dev/virtio-ports/org.qemu.guest_agent.0); the ids are the harness's own.
const (
	AgentPortName = "org.qemu.guest_agent.0"
	agentChardev  = "qga0"
	agentDevice   = "qga0-port"
)

// syncAttempt bounds one Sync while waiting for the agent to answer; slow TCG guests answer the
// first sync ≈0.3 s after opening the port.
const syncAttempt = 2 * time.Second

// AttachAgent hot-plugs the guest agent's channel and returns a client that has synchronised
// with the agent: QMP chardev-add (a unix socket server in the VM's dir), device_add of a
// virtserialport named org.qemu.guest_agent.0 on vser0.0, a wait for VSERPORT_CHANGE (the guest
// opened the port), then Sync until the agent answers. ctx bounds all of it.
func (v *VM) AttachAgent(ctx context.Context) (*qga.Client, error) {
	v.amu.Lock()
	defer v.amu.Unlock()
	mark := v.qmp.Mark()
	client, err := v.plugAgentPort(ctx)
	if err != nil {
		return nil, fmt.Errorf("vm: attach agent: %w", err)
	}
	if _, err := v.qmp.WaitEventAfter(ctx, mark, "VSERPORT_CHANGE", func(e qmp.Event) bool {
		return e.Str("id") == agentDevice && e.Bool("open")
	}); err != nil {
		return nil, fmt.Errorf("vm: attach agent: the guest never opened %s (is the agent running?): %w", AgentPortName, err)
	}
	if err := client.SyncUntil(ctx, syncAttempt); err != nil {
		return nil, fmt.Errorf("vm: attach agent: the port is open but the agent does not answer: %w", err)
	}
	v.logf("agent attached and answering")
	return client, nil
}

// plugAgentPort adds the agent's chardev, connects to it, and adds its port; v.amu is held. It
// waits for nothing in the guest, so a restore can use it while QEMU waits for its incoming
// state: the port then exists, with its id and number, before the saved state that has the
// guest's agent holding it open is loaded.
func (v *VM) plugAgentPort(ctx context.Context) (*qga.Client, error) {
	if v.agent != nil {
		return nil, errors.New("agent already attached")
	}
	path := v.AgentSocket()
	_ = os.Remove(path) // a socket left by an earlier attach
	chardev := map[string]any{
		"id": agentChardev,
		"backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": path}},
			"server": true,
			"wait":   false,
		}},
	}
	if err := v.qmp.Execute(ctx, "chardev-add", chardev, nil); err != nil {
		return nil, err
	}
	// Connect before the port exists: nothing the agent sends once it opens the port is lost.
	client, err := qga.Dial(ctx, path)
	if err != nil {
		_ = v.qmp.Execute(ctx, "chardev-remove", map[string]any{"id": agentChardev}, nil)
		return nil, err
	}
	// Raw arguments: go-qemu's typed device_add cannot carry chardev and name.
	port := map[string]any{
		"driver": "virtserialport", "bus": "vser0.0", "chardev": agentChardev,
		"name": AgentPortName, "id": agentDevice,
	}
	if err := v.qmp.Execute(ctx, "device_add", port, nil); err != nil {
		client.Close()
		v.oldAgentTrs = append(v.oldAgentTrs, client.Transcript())
		_ = v.qmp.Execute(ctx, "chardev-remove", map[string]any{"id": agentChardev}, nil)
		return nil, err
	}
	// The device is in: from here on a failure leaves it attached, for DetachAgent or Close.
	v.agent = client
	return client, nil
}

// AgentSocket is the host end of the agent's channel while it is attached: a unix socket QEMU
// listens on and accepts one client at a time. A harness that wants its own connection (the
// benchmarks time the raw stream) closes Agent()'s and dials this.
func (v *VM) AgentSocket() string { return filepath.Join(v.dir, "qga.sock") }

// Agent returns the attached agent's client, or nil.
func (v *VM) Agent() *qga.Client {
	v.amu.Lock()
	defer v.amu.Unlock()
	return v.agent
}

// DetachAgent unplugs the agent's channel: device_del, a wait for DEVICE_DELETED, then
// chardev-remove. The reference agent exits when its port goes away; the tiny image's
// supervisor restarts it for the next AttachAgent.
func (v *VM) DetachAgent(ctx context.Context) error {
	v.amu.Lock()
	defer v.amu.Unlock()
	if v.agent == nil {
		return errors.New("vm: no agent attached")
	}
	v.agent.Close()
	v.oldAgentTrs = append(v.oldAgentTrs, v.agent.Transcript())
	v.agent = nil
	mark := v.qmp.Mark()
	if err := v.qmp.Execute(ctx, "device_del", map[string]any{"id": agentDevice}, nil); err != nil {
		return fmt.Errorf("vm: detach agent: %w", err)
	}
	if _, err := v.qmp.WaitEventAfter(ctx, mark, "DEVICE_DELETED", func(e qmp.Event) bool {
		return e.Str("device") == agentDevice
	}); err != nil {
		return fmt.Errorf("vm: detach agent: %w", err)
	}
	if err := v.qmp.Execute(ctx, "chardev-remove", map[string]any{"id": agentChardev}, nil); err != nil {
		return fmt.Errorf("vm: detach agent: %w", err)
	}
	v.logf("agent detached")
	return nil
}
