package termview

import (
	"bytes"
	"testing"
)

// TestColorWanted: colour on a terminal only, and never with NO_COLOR set
// to anything (https://no-color.org), "0" included.
func TestColorWanted(t *testing.T) {
	for _, tc := range []struct {
		terminal bool
		noColor  string
		want     bool
	}{
		{true, "", true},
		{true, "1", false},
		{true, "0", false},
		{true, "false", false},
		{false, "", false},
		{false, "1", false},
	} {
		if got := ColorWanted(tc.terminal, tc.noColor); got != tc.want {
			t.Errorf("ColorWanted(%v, %q) = %v, want %v", tc.terminal, tc.noColor, got, tc.want)
		}
	}
	// What the commands pass: NO_COLOR from the environment, and a
	// writer that is not a terminal gets plain text whatever it says.
	if opts := ScreenOptions(&bytes.Buffer{}, ""); opts.Color || opts.Width != 0 {
		t.Errorf("ScreenOptions(a buffer) = %+v, want plain and full width", opts)
	}
}
