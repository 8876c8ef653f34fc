// Package vm runs one QEMU virtual machine for a spec: it builds the command line from
// functional options, starts QEMU in its own process group and temp dir, connects QMP, captures
// both serial lines, hot-plugs the guest agent's virtio-serial port on demand, and guarantees
// that the process, its sockets and its temp dir are gone afterwards — after Close, on SIGINT or
// SIGTERM, and (through a parent-death signal and a sweep of stale dirs) even when the test
// binary itself was killed.
//
// # Machine
//
// q35 with S3 and S4 enabled, -cpu max, TCG unless /dev/kvm can really create a VM (on many CI
// hosts it opens but KVM_CREATE_VM fails), -nodefaults, no display. Devices: a virtio-serial
// controller with id vser0 and no ports (AttachAgent adds the agent's port), virtio-rng, and
// whatever the options add (user-mode NICs with fixed MACs, virtio-blk disks).
//
// # Serial lines
//
// Both serial lines are socketpairs handed to QEMU as file descriptors, so nothing the guest
// prints is lost before the harness connects and no socket file has to be waited for:
//
//   - ttyS0 is the guest's log (kernel messages, the tiny image's "TINY: <event>" lines). It is
//     kept in memory for WaitSerial and Artifacts, copied live to serial0.log in the VM's dir
//     (tail -f it while debugging), and written line by line with timestamps to the log writer.
//   - ttyS1 is the console shell the Console type drives with a marker protocol (see Console).
//
// # Snapshots
//
// A Template is a set of options whose booted state is saved once (Save: boot, a caller's ready
// function, QMP stop, migrate to a state file) and restored many times (Restore: the same
// command line plus -incoming defer, migrate-incoming, cont, the guest clock stepped through the
// console), each clone on fresh qcow2 overlays of every disk. When the ready function attached
// the agent, the snapshot holds it running with its port open: every clone plugs the same port
// before the state loads and answers after one sync. Otherwise clones attach it (AttachAgent,
// or RestoreAgent). See snapshot.go for what clones share.
//
// # Files
//
// Everything lives in /tmp/qgakit-XXXX (short: unix socket paths are limited to 108 bytes):
// qmp.sock (QMP, a listening socket created before QEMU starts, so dialling never races),
// qga.sock (the agent's chardev while attached), qemu.pid, owner (the pid of the harness that
// owns the dir), serial0.log, qemu.log (QEMU's stdout and stderr) and disk overlays.
package vm
