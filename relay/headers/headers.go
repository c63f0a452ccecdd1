// Package headers edits a message's header block before it is signed:
// fields dropped or rewritten by rule (as Postfix's header_checks IGNORE
// and REPLACE do), and the sender's addresses rewritten (as its
// sender_canonical_maps do to From:).
package headers

import (
	"bytes"
	"net/mail"
	"regexp"
	"strings"
)

// Rule selects the fields named Name (any case) whose unfolded value
// matches Matching (nil: every one). With is a Replace rule's new value;
// $1 and the like refer to Matching's groups.
type Rule struct {
	Name     string
	Matching *regexp.Regexp
	With     string
}

func (r *Rule) selects(name, value string) bool {
	return strings.EqualFold(r.Name, name) && (r.Matching == nil || r.Matching.MatchString(value))
}

// Rules are the header privacy rules. The first rule that selects a field
// decides, Remove rules before Replace rules.
type Rules struct {
	Remove  []Rule
	Replace []Rule
}

// Empty reports whether the rules change nothing.
func (r *Rules) Empty() bool { return r == nil || len(r.Remove) == 0 && len(r.Replace) == 0 }

// Apply returns block (a header block with its ending empty line) with the
// rules applied, and whether anything changed. The fields that stay are
// copied byte for byte, folding included.
func (r *Rules) Apply(block []byte) ([]byte, bool) {
	if r.Empty() {
		return block, false
	}
	return edit(block, func(f field) ([]byte, bool) {
		for i := range r.Remove {
			if r.Remove[i].selects(f.name, f.value()) {
				return nil, true
			}
		}
		for i := range r.Replace {
			rule := &r.Replace[i]
			if v := f.value(); rule.selects(f.name, v) {
				nv := rule.With
				if rule.Matching != nil {
					nv = rule.Matching.ReplaceAllString(v, rule.With)
				}
				return fieldLine(f.name, nv), true
			}
		}
		return nil, false
	})
}

// RewriteAddresses gives the fields named names (From, Sender, Reply-To)
// the address to(addr) in place of every address addr for which replace
// is true, keeping display names, and reports whether anything changed. A
// field that does not parse as an address list is left alone: the
// policy's header check has already decided on From: and Sender:.
func RewriteAddresses(block []byte, names []string, replace func(addr string) bool, to func(addr string) string) ([]byte, bool) {
	return edit(block, func(f field) ([]byte, bool) {
		named := false
		for _, n := range names {
			named = named || strings.EqualFold(n, f.name)
		}
		if !named {
			return nil, false
		}
		list, err := mail.ParseAddressList(f.value())
		if err != nil {
			return nil, false
		}
		changed := false
		parts := make([]string, len(list))
		for i, a := range list {
			if n := to(a.Address); replace(a.Address) && n != a.Address {
				a.Address, changed = n, true
			}
			parts[i] = a.String()
		}
		if !changed {
			return nil, false
		}
		return fieldLine(f.name, strings.Join(parts, ", ")), true
	})
}

// field is one header field as it came: its name and its raw bytes, name
// and continuation lines included.
type field struct {
	name string
	raw  []byte
}

// value is the field's body unfolded (RFC 5322 2.2.3) and trimmed.
func (f field) value() string {
	_, v, _ := bytes.Cut(f.raw, []byte(":"))
	v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	return strings.TrimSpace(string(v))
}

func fieldLine(name, value string) []byte {
	return []byte(name + ": " + value + "\r\n")
}

// edit rebuilds block, asking change about each field: (nil, true) drops
// it, (b, true) puts b in its place, (_, false) keeps it.
func edit(block []byte, change func(field) ([]byte, bool)) ([]byte, bool) {
	var out bytes.Buffer
	changed := false
	rest := block
	for len(rest) > 0 {
		end := fieldEnd(rest)
		raw := rest[:end]
		rest = rest[end:]
		name, _, ok := bytes.Cut(raw, []byte(":"))
		if !ok || bytes.Equal(raw, []byte("\r\n")) {
			out.Write(raw) // the empty line, or a line that is not a field
			continue
		}
		if nb, ok := change(field{name: string(bytes.TrimRight(name, " \t")), raw: raw}); ok {
			out.Write(nb)
			changed = true
			continue
		}
		out.Write(raw)
	}
	if !changed {
		return block, false
	}
	return out.Bytes(), true
}

// fieldEnd is the length of the field at the start of b: its first line
// and every continuation line (one that starts with a space or a tab).
func fieldEnd(b []byte) int {
	n := 0
	for {
		i := bytes.IndexByte(b[n:], '\n')
		if i < 0 {
			return len(b)
		}
		n += i + 1
		if bytes.Equal(b[:n], []byte("\r\n")) || n == len(b) || (b[n] != ' ' && b[n] != '\t') {
			return n
		}
	}
}
