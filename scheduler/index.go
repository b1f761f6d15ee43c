package scheduler

import "slices"

// Each model key's workers are a binary heap ordered by indexLess: workers
// with a free slot first, then by better (fewest leases, lowest GPU
// utilization, most free VRAM, granted longest ago). pick takes the top when
// it may serve the request, so a decision costs O(log n) however many
// workers serve the model, instead of a scan; it scans only when the top
// cannot take the request for a reason the order does not know (stale,
// unhealthy, being stopped, short of VRAM for this request).

func isFull(w *worker) bool { return w.leases >= w.Slots }

func indexLess(a, b *worker) bool {
	if fa, fb := isFull(a), isFull(b); fa != fb {
		return !fa
	}
	return better(a, b)
}

// index adds w to the heap of each of its keys.
func (s *Scheduler) index(w *worker) {
	w.pos = make([]int, len(w.keys))
	for i, k := range w.keys {
		h := append(s.byKey[k], w)
		w.pos[i] = len(h) - 1
		s.byKey[k] = h
		siftUp(h, k, len(h)-1)
	}
}

// unindex removes w from the heaps of its keys.
func (s *Scheduler) unindex(w *worker) {
	for i, k := range w.keys {
		h := s.byKey[k]
		j := w.pos[i]
		last := len(h) - 1
		if j != last {
			swapAt(h, k, j, last)
		}
		h[last] = nil
		h = h[:last]
		if len(h) == 0 {
			delete(s.byKey, k)
			continue
		}
		s.byKey[k] = h
		if j < len(h) {
			if !siftDown(h, k, j) {
				siftUp(h, k, j)
			}
		}
	}
}

// reindex restores w's place after its leases or figures changed.
func (s *Scheduler) reindex(w *worker) {
	for i, k := range w.keys {
		h := s.byKey[k]
		j := w.pos[i]
		if !siftDown(h, k, j) {
			siftUp(h, k, j)
		}
	}
}

func slot(w *worker, key string) int { return slices.Index(w.keys, key) }

func swapAt(h []*worker, key string, i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos[slot(h[i], key)] = i
	h[j].pos[slot(h[j], key)] = j
}

func siftUp(h []*worker, key string, j int) {
	for j > 0 {
		i := (j - 1) / 2
		if !indexLess(h[j], h[i]) {
			break
		}
		swapAt(h, key, i, j)
		j = i
	}
}

// down moves h[i0] down; it reports whether it moved.
func siftDown(h []*worker, key string, i0 int) bool {
	i, n := i0, len(h)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		j := l
		if r := l + 1; r < n && indexLess(h[r], h[l]) {
			j = r
		}
		if !indexLess(h[j], h[i]) {
			break
		}
		swapAt(h, key, i, j)
		i = j
	}
	return i > i0
}
