package launcher

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// ExitError is a child that exited while Await waited: its message names
// the child, its pid and status, and quotes the end of its log, where it
// says why.
type ExitError struct {
	Process *Process
}

// ExitLogLines is how much of a child's log an ExitError quotes: enough for
// the error and the lines that led to it.
const ExitLogLines = 8

func (e *ExitError) Error() string {
	p := e.Process
	var b strings.Builder
	fmt.Fprintf(&b, "%s (pid %d) exited: %s", p.name, p.Pid(), p.Status())
	tail, err := p.LogTail(ExitLogLines)
	switch {
	case err != nil:
		fmt.Fprintf(&b, " (read its log: %v)", err)
	case len(tail) == 0:
		fmt.Fprintf(&b, " (its log %s is empty)", p.logPath)
	default:
		fmt.Fprintf(&b, "; the end of %s:", p.logPath)
		for _, l := range tail {
			b.WriteString("\n    " + printable(l))
		}
	}
	return b.String()
}

// printable makes a line of a child's log safe to print on a terminal:
// control characters (escape sequences among them) and invalid UTF-8 become
// '?', as termview does with text from the network.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}
