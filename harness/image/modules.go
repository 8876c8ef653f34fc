package image

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Debian's kernel packages ship no modules.dep (the postinst runs depmod), so the builder
// derives the same graph from each module's own .modinfo "depends=" list, which is what
// depmod's symbol resolution yields for in-tree modules, and needs no depmod on the host.

// modName normalises a module file or module name: basename, no .ko suffix, '-' as '_'
// (the kernel treats both as the same character in module names).
func modName(s string) string {
	s = filepath.Base(s)
	for _, suf := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(s, suf) {
			s = strings.TrimSuffix(s, suf)
			break
		}
	}
	return strings.ReplaceAll(s, "-", "_")
}

// moduleConf is images/tiny/modules.conf: which modules load early and which late.
type moduleConf struct{ Early, Late []string }

func parseModuleConf(data []byte) (moduleConf, error) {
	var c moduleConf
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 2 {
			return c, fmt.Errorf("modules.conf line %d: want \"<early|late> <module>\", got %q", line, sc.Text())
		}
		switch f[0] {
		case "early":
			c.Early = append(c.Early, modName(f[1]))
		case "late":
			c.Late = append(c.Late, modName(f[1]))
		default:
			return c, fmt.Errorf("modules.conf line %d: unknown phase %q", line, f[0])
		}
	}
	return c, sc.Err()
}

// parseModinfo splits a .modinfo section (NUL-terminated key=value strings) into its
// fields; a key that repeats (alias, firmware) keeps every value.
func parseModinfo(data []byte) map[string][]string {
	m := map[string][]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := bytes.Cut(kv, []byte{'='})
		if !ok || len(k) == 0 {
			continue
		}
		m[string(k)] = append(m[string(k)], string(v))
	}
	return m
}

// parseBuiltin reads modules.builtin (one path of a built-in module per line) into a set of
// module names.
func parseBuiltin(data []byte) map[string]bool {
	set := map[string]bool{}
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			set[modName(l)] = true
		}
	}
	return set
}

// modIndex is what the resolver needs to know about a kernel's modules.
type modIndex struct {
	builtin map[string]bool
	path    map[string]string // module name -> file, relative to the modules dir
	deps    func(name string) ([]string, error)
}

// loadModIndex indexes the modules under dir (a /lib/modules/<version> tree).
func loadModIndex(dir string) (*modIndex, error) {
	ix := &modIndex{builtin: map[string]bool{}, path: map[string]string{}}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		ix.builtin = parseBuiltin(b)
	} else if !os.IsNotExist(err) {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.Contains(d.Name(), ".ko") {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if n := modName(rel); ix.path[n] == "" {
			ix.path[n] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	ix.deps = func(name string) ([]string, error) {
		return readModDepends(filepath.Join(dir, ix.path[name]))
	}
	return ix, nil
}

// readModDepends returns the "depends=" list of the module file at p.
func readModDepends(p string) ([]string, error) {
	if !strings.HasSuffix(p, ".ko") {
		// busybox insmod loads plain ELF only; a compressed module would need unpacking.
		return nil, fmt.Errorf("module %s: compressed modules are not supported", p)
	}
	f, err := elf.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", p)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: read .modinfo: %w", p, err)
	}
	var deps []string
	for _, v := range parseModinfo(data)["depends"] {
		for _, d := range strings.Split(v, ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, modName(d))
			}
		}
	}
	return deps, nil
}

// resolve returns the module names to load for want, each after its dependencies, leaving
// out built-in modules and those in loaded (already on an earlier list). A wanted module that
// is neither a file nor built in is an error, so a typo in modules.conf fails the build
// instead of a boot.
func (ix *modIndex) resolve(want []string, loaded map[string]bool) ([]string, error) {
	var order []string
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch {
		case loaded[name] || state[name] == done:
			return nil
		case state[name] == visiting:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		case ix.path[name] == "":
			if ix.builtin[name] {
				state[name] = done
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %s (needed by %s) not found", name, chain[len(chain)-1])
			}
			return fmt.Errorf("module %s not found", name)
		}
		state[name] = visiting
		deps, err := ix.deps(name)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range want {
		if err := visit(modName(w), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleSet is the resolved early and late lists.
type moduleSet struct {
	Early []string `json:"early"`
	Late  []string `json:"late"`
}

// resolveConf resolves both phases: late gets only what early did not already load.
func (ix *modIndex) resolveConf(c moduleConf) (moduleSet, error) {
	early, err := ix.resolve(c.Early, nil)
	if err != nil {
		return moduleSet{}, fmt.Errorf("early modules: %w", err)
	}
	loaded := map[string]bool{}
	for _, m := range early {
		loaded[m] = true
	}
	late, err := ix.resolve(c.Late, loaded)
	if err != nil {
		return moduleSet{}, fmt.Errorf("late modules: %w", err)
	}
	return moduleSet{Early: early, Late: late}, nil
}
