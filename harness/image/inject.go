package image

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// ExtraFile is one more file for the archive InjectAgentWith appends (a config file, a
// fsfreeze hook).
type ExtraFile struct {
	// Path is the absolute path in the guest.
	Path string
	// Mode is its permission bits.
	Mode fs.FileMode
	// Data is its contents.
	Data []byte
}

// InjectAgent writes out: the base initramfs followed by a second cpio archive holding agent at
// AgentPath and the shared libraries it links, at the paths where the host's loader finds
// them, so a dynamic binary like /usr/sbin/qemu-ga runs as well as a static one.
func (t *Tiny) InjectAgent(ctx context.Context, agent, out string) error {
	return t.InjectAgentWith(ctx, agent, out)
}

// InjectAgentWith is InjectAgent with extra files in the appended archive. The kernel unpacks
// concatenated archives in order, so an extra file replaces one of the base image.
func (t *Tiny) InjectAgentWith(ctx context.Context, agent, out string, extra ...ExtraFile) error {
	if err := checkAgentBinary(agent); err != nil {
		return err
	}
	libs, err := sharedLibs(agent, hostLibDirs())
	if err != nil {
		return fmt.Errorf("inject %s: %w", agent, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := writeInjected(tmp, t.Initramfs, agent, libs, extra); err != nil {
		tmp.Close()
		return fmt.Errorf("inject %s: %w", agent, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("inject agent: %w", err)
	}
	return nil
}

func writeInjected(w *os.File, base, agent string, libs []libFile, extra []ExtraFile) error {
	b, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("open base initramfs: %w", err)
	}
	n, err := io.Copy(w, b)
	b.Close()
	if err != nil {
		return fmt.Errorf("copy base initramfs: %w", err)
	}
	// The kernel looks for an uncompressed archive only at 4-byte aligned offsets of the whole
	// initrd, and skips zero bytes between archives.
	if r := n % 4; r != 0 {
		if _, err := w.Write(make([]byte, 4-r)); err != nil {
			return fmt.Errorf("pad initramfs: %w", err)
		}
	}
	cw := NewCpioWriter(w)
	if err := copyIntoCpio(cw, AgentPath, 0o755, agent); err != nil {
		return err
	}
	for _, l := range libs {
		if err := copyIntoCpio(cw, l.Guest, 0o755, l.Host); err != nil {
			return err
		}
	}
	for _, e := range extra {
		if !filepath.IsAbs(e.Path) {
			return fmt.Errorf("extra file %q: path must be absolute", e.Path)
		}
		if err := cw.File(e.Path, e.Mode, e.Data); err != nil {
			return err
		}
	}
	return cw.Close()
}

// checkAgentBinary refuses what cannot run in the x86-64 guest. A file that is not ELF (a
// script) is allowed: its interpreter must then be in the image.
func checkAgentBinary(agent string) error {
	st, err := os.Stat(agent)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("agent %s is not a regular file", agent)
	}
	f, err := elf.Open(agent)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return nil
		}
		return fmt.Errorf("agent: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return fmt.Errorf("agent %s is %v %v, the guest is x86-64", agent, f.Class, f.Machine)
	}
	return nil
}

// TinyOptions are the per-boot choices Cmdline turns into kernel arguments.
type TinyOptions struct {
	// AgentArgs are appended to the agent's command line (qga.args=).
	AgentArgs []string
	// Mounts are block devices (vdb, vdc) that /init mounts on /mnt/<name> (tiny.mnt=).
	Mounts []string
	// Swap is a block device /init enables as swap (tiny.swap=).
	Swap string
	// Resume is the swap device to resume a hibernated guest from (resume=); "vdb" or
	// "/dev/vdb".
	Resume string
	// Extra are more kernel arguments, last, so they override the defaults (a later
	// "8250.nr_uarts=4" for a third serial line, "loglevel=7" to undo quiet).
	Extra []string
}

// Cmdline returns the kernel command line for a boot of t with o.
func (t *Tiny) Cmdline(o TinyOptions) string {
	args := []string{
		// ttyS0 carries the kernel log; two UARTs, so the kernel does not probe absent ones.
		"console=ttyS0", "8250.nr_uarts=2",
		// What costs time under TCG and buys nothing in a throwaway test guest.
		"quiet", "mitigations=off", "no_timer_check", "cryptomgr.notests",
		"initcall_blacklist=crypto_kdf108_init",
		// TCG's TSC is the host's and steady; the clocksource watchdog would otherwise demote
		// it to hpet on a busy host.
		"tsc=reliable",
	}
	if khz := hostTSCkHz(); khz > 0 {
		// Skips the early calibration, which is slow under TCG and sometimes wrong.
		args = append(args, "tsc_early_khz="+strconv.Itoa(khz))
	}
	if len(o.AgentArgs) > 0 {
		enc := make([]string, len(o.AgentArgs))
		for i, a := range o.AgentArgs {
			enc[i] = encodeAgentArg(a)
		}
		args = append(args, "qga.args="+strings.Join(enc, ","))
	}
	if len(o.Mounts) > 0 {
		m := make([]string, len(o.Mounts))
		for i, d := range o.Mounts {
			m[i] = strings.TrimPrefix(d, "/dev/")
		}
		args = append(args, "tiny.mnt="+strings.Join(m, ","))
	}
	if o.Swap != "" {
		args = append(args, "tiny.swap="+strings.TrimPrefix(o.Swap, "/dev/"))
	}
	if o.Resume != "" {
		args = append(args, "resume=/dev/"+strings.TrimPrefix(o.Resume, "/dev/"))
	}
	return strings.Join(append(args, o.Extra...), " ")
}

// encodeAgentArg escapes what cannot travel inside the comma-separated, space-free qga.args=
// value; /lib/tiny/supervisor decodes it.
var agentArgEscaper = strings.NewReplacer("%", "%25", ",", "%2C", " ", "%20", "\"", "%22")

func encodeAgentArg(a string) string { return agentArgEscaper.Replace(a) }

var tscOnce = sync.OnceValue(func() int { return readTSCkHz("/proc/cpuinfo") })

func hostTSCkHz() int { return tscOnce() }

// readTSCkHz estimates the host's TSC frequency from cpuinfo: with a constant TSC, "cpu MHz"
// is the TSC's rate on the (virtual) machines this runs on. 0 when unknown.
func readTSCkHz(cpuinfo string) int {
	b, err := os.ReadFile(cpuinfo)
	if err != nil {
		return 0
	}
	var mhz float64
	constant := false
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "cpu MHz":
			if mhz == 0 {
				mhz, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		case "flags":
			constant = constant || strings.Contains(" "+v+" ", " constant_tsc ")
		}
	}
	if !constant || mhz <= 0 {
		return 0
	}
	return int(mhz*1000 + 0.5)
}
