package image

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// systemLibDirs are the directories Debian's dynamic loader searches by default; the guest has
// no ld.so.cache, so an injected library must land in one of them (or in the RUNPATH of what
// needs it) to be found.
var systemLibDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// libFile is one file a binary needs at run time: where it goes in the guest and where its
// contents are on the host.
type libFile struct{ Guest, Host string }

// hostLibDirs is the host's library search list: ld.so.conf's directories, then the system
// ones.
func hostLibDirs() []string {
	seen := map[string]bool{}
	var dirs []string
	add := func(d string) {
		if d = filepath.Clean(d); !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	for _, d := range readLdSoConf("/etc/ld.so.conf", 0) {
		add(d)
	}
	for _, d := range systemLibDirs {
		add(d)
	}
	return dirs
}

// readLdSoConf returns the directories listed in an ld.so.conf file, following "include"
// globs. A missing file lists nothing.
func readLdSoConf(path string, depth int) []string {
	data, err := os.ReadFile(path)
	if err != nil || depth > 8 {
		return nil
	}
	var dirs []string
	for _, l := range strings.Split(string(data), "\n") {
		if i := strings.IndexByte(l, '#'); i >= 0 {
			l = l[:i]
		}
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
		case f[0] == "include" && len(f) > 1:
			for _, pat := range f[1:] {
				if !filepath.IsAbs(pat) {
					pat = filepath.Join(filepath.Dir(path), pat)
				}
				matches, _ := filepath.Glob(pat)
				sort.Strings(matches)
				for _, m := range matches {
					dirs = append(dirs, readLdSoConf(m, depth+1)...)
				}
			}
		case filepath.IsAbs(f[0]):
			dirs = append(dirs, f[0])
		}
	}
	return dirs
}

// sharedLibs returns the ELF interpreter and every shared library that bin needs, following
// DT_NEEDED recursively the way the dynamic loader does (RUNPATH/RPATH of the needing object,
// then dirs), with each library at the path where it was found. A static binary, or a file
// that is not ELF (a script), needs nothing.
func sharedLibs(bin string, dirs []string) ([]libFile, error) {
	f, err := elf.Open(bin)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", bin, err)
	}
	class, machine := f.Class, f.Machine
	interp, err := elfInterp(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}

	out := map[string]libFile{}
	if interp != "" {
		if _, err := os.Stat(interp); err != nil {
			return nil, fmt.Errorf("%s: ELF interpreter: %w", bin, err)
		}
		out[interp] = libFile{Guest: interp, Host: interp}
	}
	// The interpreter is already loaded under its soname, so libc's DT_NEEDED entry for it
	// needs no file.
	done := map[string]bool{filepath.Base(interp): interp != ""}
	todo := []string{bin}
	for len(todo) > 0 {
		obj := todo[0]
		todo = todo[1:]
		needed, runpath, err := elfDynamic(obj)
		if err != nil {
			return nil, err
		}
		for _, name := range needed {
			if done[name] {
				continue
			}
			done[name] = true
			p, err := findLib(name, runpath, dirs, class, machine)
			if err != nil {
				return nil, fmt.Errorf("%s (needed by %s): %w", name, obj, err)
			}
			out[p] = libFile{Guest: p, Host: p}
			todo = append(todo, p)
		}
	}
	libs := make([]libFile, 0, len(out))
	for _, l := range out {
		libs = append(libs, l)
	}
	sort.Slice(libs, func(i, k int) bool { return libs[i].Guest < libs[k].Guest })
	return libs, nil
}

func elfInterp(f *elf.File) (string, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("read PT_INTERP: %w", err)
		}
		return strings.TrimRight(string(b), "\x00"), nil
	}
	return "", nil
}

// elfDynamic returns an object's DT_NEEDED entries and its library search path from
// DT_RUNPATH (or DT_RPATH), with $ORIGIN expanded.
func elfDynamic(p string) (needed, runpath []string, err error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", p, err)
	}
	defer f.Close()
	if f.Section(".dynamic") == nil {
		return nil, nil, nil
	}
	if needed, err = f.DynString(elf.DT_NEEDED); err != nil {
		return nil, nil, fmt.Errorf("%s: DT_NEEDED: %w", p, err)
	}
	rp, err := f.DynString(elf.DT_RUNPATH)
	if err == nil && len(rp) == 0 {
		rp, err = f.DynString(elf.DT_RPATH)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: DT_RUNPATH: %w", p, err)
	}
	origin := filepath.Dir(p)
	for _, s := range rp {
		for _, d := range strings.Split(s, ":") {
			if d == "" {
				continue
			}
			d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
			runpath = append(runpath, d)
		}
	}
	return needed, runpath, nil
}

// findLib looks a library up as the loader would, skipping files of another ELF class or
// machine (a 32-bit library of the same name in a multilib dir).
func findLib(name string, runpath, dirs []string, class elf.Class, machine elf.Machine) (string, error) {
	var cands []string
	if strings.Contains(name, "/") {
		cands = []string{name}
	} else {
		for _, d := range append(append([]string{}, runpath...), dirs...) {
			cands = append(cands, filepath.Join(d, name))
		}
	}
	for _, c := range cands {
		f, err := elf.Open(c)
		if err != nil {
			continue
		}
		ok := f.Class == class && f.Machine == machine
		f.Close()
		if ok {
			return c, nil
		}
	}
	return "", fmt.Errorf("not found in %s", strings.Join(append(append([]string{}, runpath...), dirs...), ":"))
}

// elfIsStatic reports whether the ELF file at p runs without a dynamic loader.
func elfIsStatic(p string) (bool, error) {
	f, err := elf.Open(p)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", p, err)
	}
	defer f.Close()
	interp, err := elfInterp(f)
	if err != nil {
		return false, fmt.Errorf("%s: %w", p, err)
	}
	return interp == "", nil
}
