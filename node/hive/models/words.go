package models

import (
	"fmt"
	"strings"
)

// SplitWords splits s into words with POSIX shell quoting rules: text in single
// quotes is literal; text in double quotes is literal except that a backslash
// escapes \ " $ ` and newline; outside quotes a backslash escapes the next
// character, and a backslash-newline is a line continuation. Words are
// separated by unquoted spaces, tabs and newlines; an empty quoted string ("")
// is a word of its own.
//
// Nothing is expanded ($VAR, `cmd`, globs and ~ stay as written) and no shell
// is ever run: engine templates and args come from operators' flags, and an
// engine's argv must be exactly what the operator sees, with no second round
// of interpretation that a model path or name could inject into.
func SplitWords(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		// inWord is separate from cur.Len() so that "" yields an empty word.
		inWord bool
	)
	for i := 0; i < len(s); {
		// Byte-wise is safe for UTF-8: every character with a meaning here
		// is ASCII, and multi-byte sequences never contain ASCII bytes.
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
			i++
		case '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("split words: trailing backslash in %q", s)
			}
			i++
			if s[i] == '\n' { // line continuation: neither a character nor a separator
				i++
				continue
			}
			cur.WriteByte(s[i])
			inWord = true
			i++
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("split words: unterminated single quote at offset %d in %q", i, s)
			}
			cur.WriteString(s[i+1 : i+1+end])
			inWord = true
			i += end + 2
		case '"':
			n, err := doubleQuoted(s, i, &cur)
			if err != nil {
				return nil, err
			}
			inWord = true
			i = n
		default:
			cur.WriteByte(c)
			inWord = true
			i++
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// doubleQuoted copies the double-quoted string opening at s[open] into cur and
// returns the index just past its closing quote.
func doubleQuoted(s string, open int, cur *strings.Builder) (int, error) {
	for j := open + 1; j < len(s); {
		switch s[j] {
		case '"':
			return j + 1, nil
		case '\\':
			if j+1 < len(s) && strings.IndexByte("\\\"$`\n", s[j+1]) >= 0 {
				if s[j+1] != '\n' { // backslash-newline vanishes, as outside quotes
					cur.WriteByte(s[j+1])
				}
				j += 2
				continue
			}
			// Before any other character the backslash is literal (POSIX).
			cur.WriteByte('\\')
			j++
		default:
			cur.WriteByte(s[j])
			j++
		}
	}
	return 0, fmt.Errorf("split words: unterminated double quote at offset %d in %q", open, s)
}
