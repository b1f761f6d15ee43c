package scheduler

import (
	"slices"
	"time"
)

// Each model key's workers are a binary heap ordered by indexLess: workers
// that may take a request by their own state first (a free slot, healthy,
// not being stopped, their GPU not busy outside rbee), then those that may
// take a standby grant (Config.Standby), then by better
// (fewest leases, lowest GPU utilization, most free VRAM, granted longest
// ago). pick walks the heap best first and stops at the first worker that
// may take the request: the top, unless it has gone stale or lacks the VRAM
// this request needs; and nothing past the first blocked worker can, so a
// decision costs O(log n) however many workers serve the model.

// blocked reports whether w's own state keeps it from taking any request
// (what does not change with time or the request).
func (s *Scheduler) blocked(w *worker) bool {
	return w.leases >= w.Slots || w.health != healthy || w.stopping ||
		(w.leases == 0 && outsideUtil(w) >= s.cfg.SaturatedPct)
}

// standbyOpen reports whether w, whose slots are all leased, may be
// granted a request ahead (Config.Standby).
func (s *Scheduler) standbyOpen(w *worker) bool {
	return s.cfg.Standby > 0 && w.leases >= w.Slots && w.leases < w.Slots+s.cfg.Standby &&
		w.health == healthy && !w.stopping
}

// rank is w's tier in the heap: 0 a free slot, 1 only a standby grant
// open, 2 neither.
func (s *Scheduler) rank(w *worker) int {
	switch {
	case !s.blocked(w):
		return 0
	case s.standbyOpen(w):
		return 1
	}
	return 2
}

func (s *Scheduler) indexLess(a, b *worker) bool {
	ra, rb := s.rank(a), s.rank(b)
	if ra != rb {
		return ra < rb
	}
	if ra == 1 {
		// Among full workers, the one to stand by on is the one likely
		// to free a slot first: fewest standing by, then granted
		// longest ago. Its GPU figures describe the work it runs, not
		// when that ends: the worker that just finished a request
		// looks idlest and would take every standby grant.
		if a.leases != b.leases {
			return a.leases < b.leases
		}
		if a.lastGrant != b.lastGrant {
			return a.lastGrant < b.lastGrant
		}
		return a.id < b.id
	}
	return better(a, b)
}

// pickIndexed is the best worker of key that may take r now, walking the
// heap best first; nil when none may.
func (s *Scheduler) pickIndexed(key string, r Request, now time.Time) *worker {
	return s.walk(key, r, now, 0)
}

// pickStandby is the best worker of key that may take r as a standby grant
// now (pick found none with a free slot); nil when none may or the model's
// requests are not short enough for one.
func (s *Scheduler) pickStandby(key string, r Request, now time.Time) *worker {
	if !s.standbyFor(key) {
		return nil
	}
	return s.walk(key, r, now, 1)
}

// standbyFor reports whether key's requests may be granted ahead: its
// service time is measured and short (Config.StandbyBelow).
func (s *Scheduler) standbyFor(key string) bool {
	svc := s.service[key]
	return s.cfg.Standby > 0 && svc > 0 && svc < s.cfg.StandbyBelow
}

// walk is the best worker of key, of rank at most limit, that may take r,
// walking the heap best first: with limit 1 a standby grant counts as
// taking it.
func (s *Scheduler) walk(key string, r Request, now time.Time, limit int) *worker {
	h := s.byKey[key]
	if len(h) == 0 || s.rank(h[0]) > limit {
		return nil
	}
	ok := func(w *worker) bool {
		if limit == 0 {
			return s.eligible(w, r, key, now)
		}
		// Requests waiting for w alone (a conversation's turn) take
		// its next slot before a newcomer stands by for it.
		return s.whyWith(w, r, key, now, w.Slots+s.cfg.Standby) == "" && s.pinned[w.id].head(now, s.cfg.AgingAfter) == nil
	}
	if ok(h[0]) {
		return h[0] // the usual case
	}
	// The candidates are heap positions; their order is the heap's.
	next := []int{0}
	for len(next) > 0 {
		bi := 0
		for i := 1; i < len(next); i++ {
			if s.indexLess(h[next[i]], h[next[bi]]) {
				bi = i
			}
		}
		j := next[bi]
		next[bi] = next[len(next)-1]
		next = next[:len(next)-1]
		w := h[j]
		if s.rank(w) > limit {
			return nil // so is everything after it
		}
		if ok(w) {
			return w
		}
		for _, c := range []int{2*j + 1, 2*j + 2} {
			if c < len(h) {
				next = append(next, c)
			}
		}
	}
	return nil
}

// index adds w to the heap of each of its keys.
func (s *Scheduler) index(w *worker) {
	if len(w.pos) != len(w.keys) {
		w.pos = make([]int, len(w.keys))
	}
	for i, k := range w.keys {
		h := append(s.byKey[k], w)
		w.pos[i] = len(h) - 1
		s.byKey[k] = h
		s.siftUp(h, k, len(h)-1)
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
			if !s.siftDown(h, k, j) {
				s.siftUp(h, k, j)
			}
		}
	}
}

// reindex restores w's place after its leases or figures changed.
func (s *Scheduler) reindex(w *worker) {
	for i, k := range w.keys {
		h := s.byKey[k]
		j := w.pos[i]
		if !s.siftDown(h, k, j) {
			s.siftUp(h, k, j)
		}
	}
}

func slot(w *worker, key string) int { return slices.Index(w.keys, key) }

func swapAt(h []*worker, key string, i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos[slot(h[i], key)] = i
	h[j].pos[slot(h[j], key)] = j
}

func (s *Scheduler) siftUp(h []*worker, key string, j int) {
	for j > 0 {
		i := (j - 1) / 2
		if !s.indexLess(h[j], h[i]) {
			break
		}
		swapAt(h, key, i, j)
		j = i
	}
}

// down moves h[i0] down; it reports whether it moved.
func (s *Scheduler) siftDown(h []*worker, key string, i0 int) bool {
	i, n := i0, len(h)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		j := l
		if r := l + 1; r < n && s.indexLess(h[r], h[l]) {
			j = r
		}
		if !s.indexLess(h[j], h[i]) {
			break
		}
		swapAt(h, key, i, j)
		i = j
	}
	return i > i0
}
