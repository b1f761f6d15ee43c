package models

import (
	"strings"
	"unicode/utf8"
)

// clean makes s fit a telemetry text field and an error message: valid
// UTF-8 without terminal escape sequences (engines color their logs) or
// other control characters, at most about n bytes.
func clean(s string, n int) string {
	s = stripEscapes(strings.ToValidUTF8(s, "?"))
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "..."
	}
	return s
}

// stripEscapes removes ANSI/ECMA-48 escape sequences from s: CSI
// (ESC [ ... final byte, or C1 CSI), OSC (ESC ] ... BEL or ST, or C1 OSC),
// DCS, SOS, PM and APC strings (... ST), and two-byte ESC sequences. Any
// other C0 or C1 control character (tab, carriage return) becomes a space.
// A sequence cut off at the end of s is dropped.
func stripEscapes(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if !isControl(r) {
			b.WriteRune(r)
			continue
		}
		kind := r
		if r == 0x1b {
			if i >= len(s) {
				break
			}
			next, nsize := utf8.DecodeRuneInString(s[i:])
			i += nsize
			switch next {
			case '[':
				kind = 0x9b
			case ']':
				kind = 0x9d
			case 'P', 'X', '^', '_':
				kind = 0x90
			default:
				continue // a two-byte sequence: ESC and one more
			}
		}
		switch kind {
		case 0x9b: // CSI: parameter and intermediate bytes, then a final byte
			for i < len(s) {
				c := s[i]
				i++
				if c >= 0x40 && c <= 0x7e || c < 0x20 || c >= 0x80 {
					break
				}
			}
		case 0x9d, 0x90, 0x98, 0x9e, 0x9f: // strings: to BEL (OSC only) or ST
			for i < len(s) {
				if s[i] == 0x07 && kind == 0x9d {
					i++
					break
				}
				if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '\\' {
					i += 2
					break
				}
				if strings.HasPrefix(s[i:], "\u009c") {
					i += len("\u009c")
					break
				}
				i++
			}
		default:
			b.WriteByte(' ')
		}
	}
	return b.String()
}

func isControl(r rune) bool { return r < 0x20 || r >= 0x7f && r < 0xa0 }
