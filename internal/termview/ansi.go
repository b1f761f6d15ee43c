package termview

// ANSI escape sequences: the colours of worker states, measuring and cutting
// lines that hold them, and the sequences of `rbee top`'s full screen. Every
// terminal emulator an SSH session ends in understands them; there is no
// terminfo lookup.

import (
	"unicode/utf8"

	"github.com/rbee/rbee/scheduler"
)

// Worker states in colour, on a terminal that wants it (ColorWanted): the
// state a person acts on stands out. Green: idle, ready for work; cyan:
// busy, taking work and with slots free; yellow: saturated, every slot
// taken (or its GPU busy outside rbee), not broken; red: failing, or down,
// the hive's requests to it fail or it is gone; grey: offline, its hive
// went silent. Any other state (unknown, a newer queen's) stays plain.
var stateColors = map[string]string{
	scheduler.StateIdle:      "\x1b[32m",
	scheduler.StateBusy:      "\x1b[36m",
	scheduler.StateSaturated: "\x1b[33m",
	scheduler.StateFailing:   "\x1b[31m",
	scheduler.StateDown:      "\x1b[31m",
	scheduler.StateOffline:   "\x1b[90m",
}

// ansiReset ends a colour.
const ansiReset = "\x1b[0m"

// The sequences of `rbee top`'s screen.
const (
	ansiAltScreen  = "\x1b[?1049h"
	ansiMainScreen = "\x1b[?1049l"
	ansiHideCursor = "\x1b[?25l"
	ansiShowCursor = "\x1b[?25h"
	ansiHome       = "\x1b[H"
	ansiClearLine  = "\x1b[K"
	ansiClearBelow = "\x1b[J"
)

// ScreenEnter takes a terminal to the alternate screen, the cursor hidden,
// for `rbee top`; ScreenLeave brings back the screen and cursor as they were.
const (
	ScreenEnter = ansiAltScreen + ansiHideCursor
	ScreenLeave = ansiShowCursor + ansiMainScreen
)

// paintState is state in its colour, or plain.
func paintState(state string) string {
	if c, ok := stateColors[state]; ok {
		return c + state + ansiReset
	}
	return state
}

// ansiSequence is the length of the escape sequence at the start of s (CSI:
// ESC [ parameters, a final byte), or 0. The views write only these (SGR
// colours); text from the network has none (termSafe).
func ansiSequence(s string) int {
	if len(s) < 2 || s[0] != 0x1b || s[1] != '[' {
		return 0
	}
	for i := 2; i < len(s); i++ {
		if s[i] >= 0x40 && s[i] <= 0x7e {
			return i + 1
		}
	}
	return len(s)
}

// displayWidth is how many columns l takes on a terminal: its characters,
// escape sequences not counted.
func displayWidth(l string) int {
	n := 0
	for i := 0; i < len(l); {
		if k := ansiSequence(l[i:]); k > 0 {
			i += k
			continue
		}
		_, size := utf8.DecodeRuneInString(l[i:])
		i += size
		n++
	}
	return n
}

// cutColumns keeps the first width columns of l (escape sequences take
// none); a line cut in colour ends the colour.
func cutColumns(l string, width int) string {
	if displayWidth(l) <= width {
		return l
	}
	n, esc := 0, false
	for i := 0; i < len(l); {
		if k := ansiSequence(l[i:]); k > 0 {
			i += k
			esc = true
			continue
		}
		if n == width {
			if esc {
				return l[:i] + ansiReset
			}
			return l[:i]
		}
		_, size := utf8.DecodeRuneInString(l[i:])
		i += size
		n++
	}
	return l
}
