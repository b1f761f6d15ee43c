package termview

// Fitting a rendering's blocks into the lines of a screen.

import (
	"cmp"
	"fmt"
	"slices"
)

// fitBlocks lays the blocks out, a blank line between two, in at most height
// lines (0: no limit). When the rows do not all fit, the blank lines go
// first, then rows are handed out in turns (see allocRows), and a block cut
// short ends with "+N more" in its last line. If even the fixed lines do not
// fit, the bottom is cut.
func fitBlocks(bs []statusBlock, height int) []string {
	caps := make([]int, len(bs))
	total, fixed := 0, 0
	for i, b := range bs {
		caps[i] = len(b.rows)
		total += len(b.head) + len(b.rows) + len(b.tail)
		fixed += len(b.head) + len(b.tail)
	}
	gap := true
	if height > 0 && total+len(bs)-1 > height {
		gap = false
		allocRows(bs, caps, height-fixed)
	}
	var out []string
	for i, b := range bs {
		if i > 0 && gap {
			out = append(out, "")
		}
		out = append(out, b.head...)
		if caps[i] >= len(b.rows) {
			out = append(out, b.rows...)
		} else if caps[i] > 0 {
			shown := caps[i] - 1
			out = append(out, b.rows[:shown]...)
			out = append(out, fmt.Sprintf("+%d more %s", len(b.rows)-shown, b.noun))
		}
		out = append(out, b.tail...)
	}
	if height > 0 && len(out) > height {
		out = out[:height]
	}
	return out
}

// allocRows lowers caps[i], the rows block i has, to what budget lines
// allow: one line each first, then in turns, each block takes up to its
// weight in rows, the heaviest first.
func allocRows(bs []statusBlock, caps []int, budget int) {
	want := slices.Clone(caps)
	clear(caps)
	order := make([]int, len(bs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(bs[b].weight, bs[a].weight) })
	for round := 0; budget > 0; round++ {
		gave := false
		for _, i := range order {
			// First one line each, so that every block can at
			// least say how many rows it has.
			share := 1
			if round > 0 {
				share = max(bs[i].weight, 1)
			}
			n := min(share, want[i]-caps[i], budget)
			if n > 0 {
				caps[i] += n
				budget -= n
				gave = true
			}
		}
		if !gave {
			return
		}
	}
}
