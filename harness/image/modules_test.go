package image

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qgakit/qgakit/images"
)

func graphIndex(deps map[string][]string, builtin ...string) *modIndex {
	ix := &modIndex{builtin: map[string]bool{}, path: map[string]string{}}
	for _, b := range builtin {
		ix.builtin[b] = true
	}
	for m := range deps {
		ix.path[m] = "kernel/" + m + ".ko"
	}
	ix.deps = func(name string) ([]string, error) { return deps[name], nil }
	return ix
}

// checkOrder fails unless every module comes after all its (non-builtin) dependencies and
// appears once.
func checkOrder(t *testing.T, order []string, deps map[string][]string, builtin map[string]bool, loaded map[string]bool) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Errorf("%s listed twice in %v", m, order)
		}
		pos[m] = i
	}
	for _, m := range order {
		for _, d := range deps[m] {
			if builtin[d] || loaded[d] {
				if _, in := pos[d]; in {
					t.Errorf("%s is built in or already loaded but listed: %v", d, order)
				}
				continue
			}
			if p, ok := pos[d]; !ok || p > pos[m] {
				t.Errorf("%s needs %s first: %v", m, d, order)
			}
		}
	}
}

func TestResolveOrdersDependenciesFirst(t *testing.T) {
	deps := map[string][]string{
		"virtio_net":    {"net_failover", "virtio", "virtio_ring"},
		"net_failover":  {"failover"},
		"failover":      nil,
		"virtio":        {"virtio_ring"},
		"virtio_ring":   nil,
		"virtio_blk":    {"virtio", "virtio_ring", "crc"},
		"xfs":           {"libcrc32c"},
		"libcrc32c":     nil,
		"unrelated_mod": nil,
	}
	ix := graphIndex(deps, "crc", "ext4")
	set, err := ix.resolveConf(moduleConf{Early: []string{"virtio-net", "virtio_blk"}, Late: []string{"ext4", "xfs", "virtio_blk"}})
	if err != nil {
		t.Fatal(err)
	}
	checkOrder(t, set.Early, deps, ix.builtin, nil)
	wantEarly := []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "virtio_blk"}
	if !slices.Equal(set.Early, wantEarly) {
		t.Errorf("early = %v, want %v", set.Early, wantEarly)
	}
	// Late holds only what early did not load; ext4 is built in.
	if want := []string{"libcrc32c", "xfs"}; !slices.Equal(set.Late, want) {
		t.Errorf("late = %v, want %v", set.Late, want)
	}
}

func TestResolveErrors(t *testing.T) {
	ix := graphIndex(map[string][]string{
		"a": {"b"}, "b": {"c"}, "c": {"a"}, // a cycle
		"needs_ghost": {"ghost"},
	})
	if _, err := ix.resolve([]string{"a"}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: err = %v", err)
	}
	if _, err := ix.resolve([]string{"needs_ghost"}, nil); err == nil ||
		!strings.Contains(err.Error(), "ghost") || !strings.Contains(err.Error(), "needs_ghost") {
		t.Errorf("missing dependency: err = %v, want it to name ghost and needs_ghost", err)
	}
	if _, err := ix.resolve([]string{"typo"}, nil); err == nil || !strings.Contains(err.Error(), "typo") {
		t.Errorf("missing module: err = %v", err)
	}
}

func TestParseModuleConf(t *testing.T) {
	c, err := parseModuleConf([]byte("# comment\nearly virtio-pci\n\nlate xfs\n  late button  \n"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Early, []string{"virtio_pci"}) || !slices.Equal(c.Late, []string{"xfs", "button"}) {
		t.Errorf("parsed %+v", c)
	}
	for _, bad := range []string{"early\n", "sometime xfs\n", "early a b\n"} {
		if _, err := parseModuleConf([]byte(bad)); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
	// The shipped file must parse: the build reads it.
	if _, err := parseModuleConf(mustReadEmbedded(t, "tiny/modules.conf")); err != nil {
		t.Errorf("images/tiny/modules.conf: %v", err)
	}
}

func TestParseModinfo(t *testing.T) {
	data := []byte("license=GPL\x00depends=virtio,virtio_ring\x00alias=a1\x00alias=a2\x00\x00\x00intree=Y\x00")
	m := parseModinfo(data)
	if got := m["depends"]; !slices.Equal(got, []string{"virtio,virtio_ring"}) {
		t.Errorf("depends = %q", got)
	}
	if got := m["alias"]; !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("alias = %q", got)
	}
	if m["intree"][0] != "Y" {
		t.Errorf("intree = %q", m["intree"])
	}
}

func TestModName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/net/virtio_net.ko": "virtio_net",
		"vmw-vsock.ko.xz":                  "vmw_vsock",
		"8250_base":                        "8250_base",
		"rtc-cmos.ko":                      "rtc_cmos",
	} {
		if got := modName(in); got != want {
			t.Errorf("modName(%q) = %q, want %q", in, got, want)
		}
	}
}

// writeModule writes a minimal ELF64 relocatable object with a .modinfo section, enough for
// debug/elf and for the resolver's reading of depends=.
func writeModule(t *testing.T, path, modinfo string) {
	t.Helper()
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	info := []byte(modinfo)
	const ehsize, shentsize = 64, 64
	infoOff := ehsize
	strOff := infoOff + len(info)
	shOff := (strOff + len(shstr) + 7) &^ 7
	var b bytes.Buffer
	le := binary.LittleEndian
	ident := []byte{0x7f, 'E', 'L', 'F', 2 /* 64-bit */, 1 /* LE */, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	b.Write(ident)
	binary.Write(&b, le, uint16(1))  // ET_REL
	binary.Write(&b, le, uint16(62)) // EM_X86_64
	binary.Write(&b, le, uint32(1))
	binary.Write(&b, le, uint64(0)) // entry
	binary.Write(&b, le, uint64(0)) // phoff
	binary.Write(&b, le, uint64(shOff))
	binary.Write(&b, le, uint32(0))
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(0)) // phentsize
	binary.Write(&b, le, uint16(0)) // phnum
	binary.Write(&b, le, uint16(shentsize))
	binary.Write(&b, le, uint16(3)) // shnum
	binary.Write(&b, le, uint16(2)) // shstrndx
	b.Write(info)
	b.Write(shstr)
	for b.Len() < shOff {
		b.WriteByte(0)
	}
	sh := func(name, typ uint32, off, size int) {
		binary.Write(&b, le, name)
		binary.Write(&b, le, typ)
		binary.Write(&b, le, uint64(0)) // flags
		binary.Write(&b, le, uint64(0)) // addr
		binary.Write(&b, le, uint64(off))
		binary.Write(&b, le, uint64(size))
		binary.Write(&b, le, uint32(0)) // link
		binary.Write(&b, le, uint32(0)) // info
		binary.Write(&b, le, uint64(1)) // addralign
		binary.Write(&b, le, uint64(0)) // entsize
	}
	sh(0, 0, 0, 0)
	sh(1, 1 /* PROGBITS */, infoOff, len(info))
	sh(10, 3 /* STRTAB */, strOff, len(shstr))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A module tree laid out like Debian's package: the index finds the files, reads depends=
// from each .modinfo, and honours modules.builtin.
func TestModIndexFromTree(t *testing.T) {
	dir := t.TempDir()
	writeModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio_ring.ko"), "license=GPL\x00depends=\x00name=virtio_ring\x00")
	writeModule(t, filepath.Join(dir, "kernel/drivers/virtio/virtio.ko"), "depends=virtio_ring\x00")
	writeModule(t, filepath.Join(dir, "kernel/drivers/block/virtio_blk.ko"), "depends=virtio,virtio_ring,crc64\x00")
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/lib/crc64.ko\nkernel/fs/ext4/ext4.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ix, err := loadModIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	order, err := ix.resolve([]string{"virtio_blk", "ext4"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"virtio_ring", "virtio", "virtio_blk"}; !slices.Equal(order, want) {
		t.Errorf("order = %v, want %v", order, want)
	}
	if got := ix.path["virtio_blk"]; got != "kernel/drivers/block/virtio_blk.ko" {
		t.Errorf("path of virtio_blk = %q", got)
	}

	// A module whose .modinfo is unreadable fails the build rather than loading out of order.
	if err := os.WriteFile(filepath.Join(dir, "kernel/broken.ko"), []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	ix, err = loadModIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.resolve([]string{"broken"}, nil); err == nil {
		t.Error("a module that is not ELF resolved without error")
	}
}

func mustReadEmbedded(t *testing.T, p string) []byte {
	t.Helper()
	b, err := images.Tiny.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
