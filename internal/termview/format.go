package termview

// How figures and text from the network read in a table cell.

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// formatMiB prints a size in MiB, or in GiB from 1 GiB up.
func formatMiB(mb uint64) string {
	if mb < 1024 {
		return fmt.Sprintf("%d MiB", mb)
	}
	return fmt.Sprintf("%.1f GiB", float64(mb)/1024)
}

// formatVRAM prints used/total in one unit: GiB when either is 1 GiB or
// more, so a 24 GiB card reads "6.0/24.0 GiB".
func formatVRAM(used, total uint64) string {
	if total == 0 {
		return formatMiB(used)
	}
	if used < 1024 && total < 1024 {
		return fmt.Sprintf("%d/%d MiB", used, total)
	}
	return fmt.Sprintf("%.1f/%.1f GiB", float64(used)/1024, float64(total)/1024)
}

// formatUptime prints the two largest units: 45s, 12m05s, 3h04m, 2d03h.
func formatUptime(s uint64) string {
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}

// sinceText says how long before now t was, to the second.
func sinceText(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Truncate(time.Second)
	if d < 0 {
		d = 0
	}
	return formatUptime(uint64(d/time.Second)) + " ago"
}

// termSafe makes text from the network safe to print on a terminal: control
// characters (C0, DEL and C1, which include ESC and CSI) become '?', as do
// tabs and newlines that would break a table, and invalid UTF-8.
func termSafe(s string) string {
	ok := true
	for _, r := range s {
		if isControl(r) || r == utf8.RuneError {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isControl(r) || r == utf8.RuneError {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isControl(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) }
