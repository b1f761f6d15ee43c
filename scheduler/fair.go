package scheduler

import (
	"container/heap"
	"math"
	"slices"
	"time"
)

// Fair queues. Each model's queue serves its waiting requests in this order:
//
//   - Priority classes, strictly: interactive before batch; except that a
//     batch request that has waited AgingAfter goes first (aging), so batch
//     work is delayed under load but never starved.
//   - Within a class, keys (tenants) share by weight, with start-time fair
//     queuing: a request's tag is max(the class's virtual time, its key's
//     last tag) + 1/weight, and the smallest tag goes first. A key that sends
//     1,000 requests at once gets tags 1, 2, 3, ...; another key's request
//     that comes later is tagged from the virtual time, so it waits behind
//     at most about one request of every other busy key (weighted), not
//     behind the whole flood. An idle key does not save up credit.
//   - Within a key, first come first served.
//
// Every operation is O(log keys); done (granted, cancelled, failed) requests
// are dropped lazily when they reach the head of their key's line.

// Priority classes.
const (
	ClassInteractive = 0
	ClassBatch       = 1
	numClasses       = 2
)

// DefaultAgingAfter is how long a batch request waits behind interactive
// ones before it goes first.
const DefaultAgingAfter = 30 * time.Second

type queue struct {
	n       int // live items
	classes [numClasses]classQueue
}

type classQueue struct {
	keys  map[string]*keyLine
	ready keyHeap // lines with live items, by their head's tag
	vtime float64 // tag of the request served last
}

// keyLine is one key's requests in one class of one queue, oldest first.
type keyLine struct {
	key     string
	items   []*waiting
	lastTag float64
	idx     int // in ready; -1 when not there
}

// front drops done items and returns the first live one.
func (l *keyLine) front() *waiting {
	for len(l.items) > 0 && l.items[0].done {
		l.items[0] = nil
		l.items = l.items[1:]
	}
	if len(l.items) == 0 {
		return nil
	}
	return l.items[0]
}

type keyHeap []*keyLine

func (h keyHeap) Len() int { return len(h) }
func (h keyHeap) Less(i, j int) bool {
	a, b := h[i].items[0], h[j].items[0]
	if a.tag != b.tag {
		return a.tag < b.tag
	}
	return a.enqueued < b.enqueued
}
func (h keyHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *keyHeap) Push(x any) {
	l := x.(*keyLine)
	l.idx = len(*h)
	*h = append(*h, l)
}
func (h *keyHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	l.idx = -1
	return l
}

// add queues wt in its class and key line, tagged by weight.
func (q *queue) add(wt *waiting, weight float64) {
	c := &q.classes[wt.class]
	l := c.line(wt.req.Key)
	if wt.tagged {
		// It keeps the place it had (a wait for its conversation's
		// worker that lapsed).
		l.lastTag = max(l.lastTag, wt.tag)
	} else {
		wt.tag = c.tagFor(l, weight)
	}
	// Oldest first within a key, also for a request that comes back to
	// this queue (from a lapsed pin) with its original place.
	i := len(l.items)
	for i > 0 && l.items[i-1].enqueued > wt.enqueued {
		i--
	}
	l.items = slices.Insert(l.items, i, wt)
	wt.line = l
	if l.idx < 0 {
		heap.Push(&c.ready, l)
	} else {
		heap.Fix(&c.ready, l.idx)
	}
	q.n++
}

// tagFor is the tag of the next request of line l.
func (c *classQueue) tagFor(l *keyLine, weight float64) float64 {
	if weight <= 0 || math.IsNaN(weight) || math.IsInf(weight, 0) {
		weight = 1
	}
	l.lastTag = max(c.vtime, l.lastTag) + 1/weight
	return l.lastTag
}

// reserve gives wt, which waits elsewhere (for its conversation's worker),
// the tag it would have in this queue, and counts it in its key's share, so
// that it competes with this queue's requests by the fair rule.
func (q *queue) reserve(wt *waiting, weight float64) {
	c := &q.classes[wt.class]
	wt.tag, wt.tagged = c.tagFor(c.line(wt.req.Key), weight), true
}

// line is key's line in class c, made when it has none.
func (c *classQueue) line(key string) *keyLine {
	if c.keys == nil {
		c.keys = make(map[string]*keyLine)
	}
	l := c.keys[key]
	if l == nil {
		l = &keyLine{key: key, idx: -1}
		c.keys[key] = l
	}
	return l
}

// headOf is class c's next request, nil when it has none.
func (c *classQueue) head() *waiting {
	for c.ready.Len() > 0 {
		l := c.ready[0]
		before := len(l.items)
		if h := l.front(); h != nil {
			if len(l.items) != before {
				heap.Fix(&c.ready, 0) // its head changed: so may its place
				continue
			}
			return h
		}
		heap.Pop(&c.ready)
		if len(l.items) == 0 && l.lastTag <= c.vtime {
			delete(c.keys, l.key) // forgets nothing: its next tag starts at vtime anyway
		}
	}
	return nil
}

// head is the request the queue serves next at now.
func (q *queue) head(now time.Time, agingAfter time.Duration) *waiting {
	if q == nil || q.n == 0 {
		return nil
	}
	hi := q.classes[ClassInteractive].head()
	lo := q.classes[ClassBatch].head()
	switch {
	case hi == nil:
		return lo
	case lo != nil && agingAfter > 0 && now.Sub(lo.arrived) >= agingAfter:
		return lo
	}
	return hi
}

// served moves the class's virtual time to wt's tag: later requests of
// keys that were idle start from here.
func (q *queue) served(wt *waiting) {
	c := &q.classes[wt.class]
	c.vtime = max(c.vtime, wt.tag)
}

// remove accounts for wt leaving (it is marked done; its line drops it
// when it reaches the front) and fixes its line's place in the heap.
func (q *queue) remove(wt *waiting) {
	q.n--
	if l := wt.line; l != nil && l.idx >= 0 && len(l.items) > 0 && l.items[0] == wt {
		c := &q.classes[wt.class]
		if l.front() == nil {
			heap.Remove(&c.ready, l.idx)
		} else {
			heap.Fix(&c.ready, l.idx)
		}
	}
}

// each calls f with every live request of the queue.
func (q *queue) each(f func(*waiting)) {
	for ci := range q.classes {
		for _, l := range q.classes[ci].keys {
			for _, wt := range l.items {
				if !wt.done {
					f(wt)
				}
			}
		}
	}
}

// order lists the live requests in the order the queue would serve them
// if nothing else came (by class, then tag), for positions and ETAs.
func (q *queue) order() []*waiting {
	var out []*waiting
	q.each(func(wt *waiting) { out = append(out, wt) })
	slices.SortFunc(out, func(a, b *waiting) int {
		if a.class != b.class {
			return a.class - b.class
		}
		switch {
		case a.tag < b.tag:
			return -1
		case a.tag > b.tag:
			return 1
		}
		return int(int64(a.enqueued) - int64(b.enqueued))
	})
	return out
}
