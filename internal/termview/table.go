package termview

// The text tables `rbee status` and `rbee top` draw: columns that give way
// in order when the terminal is narrow, cells shortened last, and colours
// (paint) that do not count towards the width.

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// column is one column of a table, and how it gives way on a screen too
// narrow for the table.
type column struct {
	name string
	// drop > 0: the column may go, lowest drop first, while the table is
	// too wide.
	drop int
	// shorten > 0: once nothing more may go, the column's cells may be
	// shortened (to shortMin), the lowest shorten first, the widest column
	// of a level first.
	shorten int
	// middle shortens a cell in its middle, keeping both ends; else its
	// end goes.
	middle bool
}

// shortMin is the fewest columns a shortened cell keeps: "llm/…80".
const shortMin = 7

// tableGap is the blank columns between two columns.
const tableGap = 2

// table is one table: its columns and rows of cells. Cells come from the
// network and end up on a terminal: the layout cleans them (termSafe).
type table struct {
	cols []column
	rows [][]string
	// paint, when not nil, dresses a cell's text (colour) after the
	// layout, which measures the text alone; col indexes cols.
	paint func(col int, text string) string
}

// lines lays the table out in width columns (0: no limit), the header
// first, one string a line, trailing blanks trimmed. A table still too wide
// after giving way as its columns allow is left so (`rbee top` cuts lines).
func (t table) lines(width int) []string {
	cells := make([][]string, 0, len(t.rows)+1)
	header := make([]string, len(t.cols))
	for i, c := range t.cols {
		header[i] = c.name
	}
	cells = append(cells, header)
	for _, r := range t.rows {
		clean := make([]string, len(r))
		for i, c := range r {
			clean[i] = termSafe(c)
		}
		cells = append(cells, clean)
	}
	widths := make([]int, len(t.cols))
	for _, r := range cells {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	keep := fitColumns(t.cols, widths, width)

	out := make([]string, 0, len(cells))
	var b strings.Builder
	for _, r := range cells {
		b.Reset()
		for _, i := range keep {
			if b.Len() > 0 {
				b.WriteString(strings.Repeat(" ", tableGap))
			}
			text := shorten(r[i], widths[i], t.cols[i].middle)
			pad := widths[i] - utf8.RuneCountInString(text)
			if t.paint != nil && len(out) > 0 {
				text = t.paint(i, text)
			}
			b.WriteString(text)
			b.WriteString(strings.Repeat(" ", pad))
		}
		out = append(out, strings.TrimRight(b.String(), " "))
	}
	return out
}

// fitColumns decides which columns a table of columns widths wide shows in
// width (0: no limit), and lowers widths[i] where cells must be shortened.
// It returns the indexes of the columns kept, in order.
func fitColumns(cols []column, widths []int, width int) []int {
	keep := make([]int, 0, len(cols))
	for i := range cols {
		keep = append(keep, i)
	}
	total := func() int {
		n := tableGap * max(len(keep)-1, 0)
		for _, i := range keep {
			n += widths[i]
		}
		return n
	}
	if width <= 0 || total() <= width {
		return keep
	}
	droppable := slices.DeleteFunc(slices.Clone(keep), func(i int) bool { return cols[i].drop == 0 })
	slices.SortStableFunc(droppable, func(a, b int) int { return cmp.Compare(cols[a].drop, cols[b].drop) })
	for _, d := range droppable {
		if total() <= width {
			return keep
		}
		keep = slices.DeleteFunc(keep, func(i int) bool { return i == d })
	}
	levels := map[int]bool{}
	for _, i := range keep {
		if cols[i].shorten > 0 {
			levels[cols[i].shorten] = true
		}
	}
	for _, level := range slices.Sorted(maps.Keys(levels)) {
		for over := total() - width; over > 0; over-- {
			// One column off the widest of this level at a time, so
			// that they end alike.
			widest := -1
			for _, i := range keep {
				if cols[i].shorten == level && widths[i] > shortMin && (widest < 0 || widths[i] > widths[widest]) {
					widest = i
				}
			}
			if widest < 0 {
				break
			}
			widths[widest]--
		}
	}
	return keep
}

// shorten fits s in width columns, marking the cut with "…": in its middle
// when middle is set, else at its end.
func shorten(s string, width int, middle bool) string {
	rs := []rune(s)
	if len(rs) <= width {
		return s
	}
	if width < 2 {
		return string(rs[:width])
	}
	if !middle {
		return string(rs[:width-1]) + "…"
	}
	tail := (width - 1) / 2
	head := width - 1 - tail
	return string(rs[:head]) + "…" + string(rs[len(rs)-tail:])
}
