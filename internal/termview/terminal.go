package termview

// Where a rendering goes: a terminal, with its width and maybe colour, or
// a pipe or a file, which get every column and no escape codes.

import (
	"io"
	"os"

	"golang.org/x/term"
)

// ColorWanted says whether output goes out in colour: on a terminal, unless
// the user set NO_COLOR to anything but empty (https://no-color.org);
// noColor is its value.
func ColorWanted(terminal bool, noColor string) bool {
	return terminal && noColor == ""
}

// TerminalOf returns w as the terminal it is, if it is one.
func TerminalOf(w io.Writer) (*os.File, bool) {
	f, ok := w.(*os.File)
	return f, ok && term.IsTerminal(int(f.Fd()))
}

// ScreenOptions fit one print to where it goes: on a terminal, its width
// and colour (unless noColor, the value of NO_COLOR, says otherwise);
// elsewhere (a pipe, a file) every column and no escape codes.
func ScreenOptions(w io.Writer, noColor string) StatusOptions {
	f, ok := TerminalOf(w)
	if !ok {
		return StatusOptions{}
	}
	opts := StatusOptions{Color: ColorWanted(true, noColor)}
	if width, _, err := term.GetSize(int(f.Fd())); err == nil {
		opts.Width = width
	}
	return opts
}
