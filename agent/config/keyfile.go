package config

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// keyFile is the subset of GLib's GKeyFile that qemu-ga's configuration uses: groups, plain
// keys (locale variants are skipped), comments, and the string and boolean value syntax. Error
// texts are GLib's, because the reference prints them in "error loading configuration" lines.
type keyFile struct {
	groups map[string]map[string]string
}

// glibSpace is what g_ascii_isspace takes for blanks: not the vertical tab, which a key or value
// keeps.
const glibSpace = " \t\n\f\r"

func parseKeyFile(data []byte) (*keyFile, error) {
	kf := &keyFile{groups: map[string]map[string]string{}}
	var cur map[string]string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		// GLib reads a line as a C string: after a NUL it sees nothing, but its messages
		// show the whole line.
		shown := strings.TrimLeft(line, glibSpace)
		if i := strings.IndexByte(line, 0); i >= 0 {
			line = line[:i]
		}
		trimmed := strings.TrimLeft(line, glibSpace)
		switch {
		case trimmed == "" || trimmed[0] == '#':
			continue
		case isGroupLine(trimmed):
			name := trimmed[1:strings.IndexByte(trimmed, ']')]
			if !isGroupName(name) {
				return nil, fmt.Errorf("Invalid group name: %s", name)
			}
			if kf.groups[name] == nil {
				kf.groups[name] = map[string]string{}
			}
			cur = kf.groups[name]
		default:
			eq := strings.IndexByte(trimmed, '=')
			if eq < 0 {
				return nil, fmt.Errorf("Key file contains line \u201c%s\u201d which is not a key-value pair, group, or comment", shown)
			}
			key := strings.TrimRight(trimmed[:eq], glibSpace)
			if key == "" {
				return nil, fmt.Errorf("Key file contains line \u201c%s\u201d which is not a key-value pair, group, or comment", shown)
			}
			if cur == nil {
				return nil, fmt.Errorf("Key file does not start with a group")
			}
			if !isKeyName(key) {
				return nil, fmt.Errorf("Invalid key name: %s", key)
			}
			// "key[locale]" entries are translations; qemu-ga never asks for them.
			if strings.HasSuffix(key, "]") && strings.Contains(key, "[") {
				continue
			}
			cur[key] = strings.TrimLeft(trimmed[eq+1:], glibSpace)
		}
	}
	return kf, nil
}

// isGroupLine is g_key_file_line_is_group: "[", anything up to the first "]", then nothing
// but spaces and tabs. Any other line that starts with "[" is read as a key-value pair.
func isGroupLine(s string) bool {
	end := strings.IndexByte(s, ']')
	return s[0] == '[' && end > 0 && strings.TrimRight(s[end+1:], " \t") == ""
}

// isGroupName is g_key_file_is_group_name: not empty, without brackets or control characters.
func isGroupName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '[' || c == ']' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// isKeyName is g_key_file_is_key_name: no brackets except one trailing "[locale]".
func isKeyName(key string) bool {
	i := strings.IndexAny(key, "[]")
	if i < 0 {
		return true
	}
	if key[i] == ']' {
		return false
	}
	end := strings.IndexByte(key[i:], ']')
	return end > 0 && i+end == len(key)-1
}

func (kf *keyFile) has(group, key string) bool {
	_, ok := kf.groups[group][key]
	return ok
}

// str is g_key_file_get_string: the raw value with its escapes resolved, UTF-8 only.
func (kf *keyFile) str(group, key string) (string, error) {
	raw := kf.groups[group][key]
	if !utf8.ValidString(raw) {
		return "", fmt.Errorf("Key file contains key \u201c%s\u201d with value \u201c%s\u201d which is not UTF-8", key, raw)
	}
	v, err := unescape(raw)
	if err != nil {
		return "", fmt.Errorf("Key file contains key \u201c%s\u201d which has a value that cannot be interpreted.", key)
	}
	return v, nil
}

// boolean is g_key_file_get_boolean: "true"/"1" or "false"/"0", trailing whitespace allowed.
func (kf *keyFile) boolean(group, key string) (bool, error) {
	switch strings.TrimRight(kf.groups[group][key], glibSpace) {
	case "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("Key file contains key \u201c%s\u201d which has a value that cannot be interpreted.", key)
}

func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		i++
		if i == len(s) {
			return "", fmt.Errorf("escape character at end of line")
		}
		switch s[i] {
		case 's':
			b.WriteByte(' ')
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\\':
			b.WriteByte('\\')
		default:
			return "", fmt.Errorf("invalid escape sequence \\%c", s[i])
		}
	}
	return b.String(), nil
}

// escapeValue is g_key_file_set_string's escaping: newlines, carriage returns and backslashes
// always, spaces and tabs only in the leading run (where the parser would otherwise drop them).
func escapeValue(s string) string {
	var b strings.Builder
	leading := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' && leading:
			b.WriteString(`\s`)
		case c == '\t' && leading:
			b.WriteString(`\t`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(c)
		}
		if c != ' ' && c != '\t' {
			leading = false
		}
	}
	return b.String()
}
