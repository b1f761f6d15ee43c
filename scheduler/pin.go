package scheduler

import (
	"cmp"
	"slices"
	"time"
)

// A pinned request asks for one worker (Request.Hive and Worker): a Responses
// API follow-up (previous_response_id) must reach the worker that holds the
// previous response. It waits in that worker's own queue, which only that
// worker's free slots pull from, so it never holds up requests any worker
// may serve. While the worker is gone (no hive lists it), serves another
// model, or is failing, down or offline, the preference lapses: the request
// is treated as one for any worker, and a waiting one moves to its model's
// queue, keeping its place in line.

// pin is the id of the worker r asks for, "" when any will do.
func (r *Request) pin() string {
	if r.Hive == "" || r.Worker == "" {
		return ""
	}
	return r.Hive + "/" + r.Worker
}

// keepPin reports whether a request for key may go on waiting for worker id.
// A new queen that has not heard from every hive yet keeps waiting for a
// worker it does not know: its hive may report it in the next round.
func (s *Scheduler) keepPin(id, key string, now time.Time) bool {
	w := s.workers[id]
	if w == nil {
		return !s.warm
	}
	if !slices.Contains(w.keys, key) {
		return false
	}
	switch stateOf(now.Sub(w.seen) <= s.cfg.StaleAfter, w.health, 0, 1, 0, s.cfg.SaturatedPct) {
	case failing, down, offline:
		return false
	}
	return true
}

// requestPinned grants r on worker pin now if it has a free slot and nothing
// older waits for it, else queues r for that worker alone.
func (s *Scheduler) requestPinned(r Request, key, pin string, now time.Time) (*Grant, error) {
	q := s.pinned[pin]
	if w := s.workers[pin]; w != nil && (q == nil || q.head(now, s.cfg.AgingAfter) == nil) && s.eligible(w, r, key, now) {
		g := s.grant(w, r, now)
		return &g, nil
	}
	return nil, s.push(s.pinned, pin, r, key, pin, now)
}

// unpinLapsed moves the requests waiting for a worker they may no longer
// wait for (see keepPin) to their model's queue, in their place by age.
func (s *Scheduler) unpinLapsed(now time.Time) {
	for id, q := range s.pinned {
		var lapsed []*waiting
		q.each(func(wt *waiting) {
			if !s.keepPin(id, wt.key, now) || (!wt.pinUntil.IsZero() && !now.Before(wt.pinUntil)) {
				lapsed = append(lapsed, wt)
			}
		})
		for _, wt := range lapsed {
			moved := &waiting{req: wt.req, key: wt.key, enqueued: wt.enqueued, class: wt.class, arrived: wt.arrived,
				tag: wt.tag, tagged: wt.tagged}
			s.unwait(wt)
			kq := s.queues[wt.key]
			if kq == nil {
				kq = &queue{}
				s.queues[wt.key] = kq
			}
			kq.add(moved, wt.req.Weight)
			s.waiting[moved.req.ID] = moved
			s.keyActive(moved.req.Key, 1) // unwait counted it out; it still waits
		}
	}
}

// pinnedWorkers lists the known workers that requests wait for.
func (s *Scheduler) pinnedWorkers() []*worker {
	var out []*worker
	for id := range s.pinned {
		if w := s.workers[id]; w != nil {
			out = append(out, w)
		}
	}
	slices.SortFunc(out, func(a, b *worker) int { return cmp.Compare(a.id, b.id) })
	return out
}
