package scheduler

import (
	"slices"
	"time"
)

// Prefix affinity: a conversation's turns go back to the worker that served
// its last turn, which holds its prompt in its KV cache, so the next turn
// computes only what is new. A request for such a worker takes its free
// slot; when the worker is full but should free a slot within AffinityWait,
// the request waits for it alone, for at most AffinityWait (then any worker
// serves it), and never more than maxAffineRounds rounds of slots wait so:
// affinity costs a bounded extra wait, never a queue that grows on one
// worker.

// DefaultAffinityWait bounds the extra wait for a conversation's worker: a
// prompt recomputed elsewhere costs about this much on a long chat.
const DefaultAffinityWait = time.Second

// maxAffineRounds is how many rounds of a worker's slots may wait for it:
// two, so that two conversations sharing a one-slot worker both keep it.
const maxAffineRounds = 2

// maxConversations bounds the conversations remembered (about 100 bytes
// each); the oldest are forgotten first.
const maxConversations = 100_000

// rememberConversation records that conv's last turn went to worker id.
func (s *Scheduler) rememberConversation(conv, id string) {
	if s.convs == nil {
		s.convs = make(map[string]string)
	}
	if _, ok := s.convs[conv]; !ok {
		s.convOrder = append(s.convOrder, conv)
		for len(s.convs) >= maxConversations && len(s.convOrder) > 0 {
			delete(s.convs, s.convOrder[0])
			s.convOrder = s.convOrder[1:]
		}
	}
	s.convs[conv] = id
	if cap(s.convOrder) > 4*maxConversations {
		s.convOrder = slices.Clone(s.convOrder) // drop what the slicing left behind
	}
}

// requestAffine serves r on its conversation's last worker when that is
// worth it: ok reports whether it decided (a grant, a wait, or a refusal).
func (s *Scheduler) requestAffine(r Request, key string, now time.Time) (g *Grant, err error, ok bool) {
	if s.cfg.AffinityWait < 0 {
		return nil, nil, false
	}
	id := s.convs[r.Conversation]
	w := s.workers[id]
	if w == nil || !slices.Contains(w.keys, key) {
		return nil, nil, false
	}
	pq := s.pinned[w.id]
	if s.eligible(w, r, key, now) && pq.head(now, s.cfg.AgingAfter) == nil {
		if q := s.queues[key]; q == nil || q.head(now, s.cfg.AgingAfter) == nil {
			gr := s.grant(w, r, now)
			return &gr, nil, true
		}
	}
	// Full, or free with older requests waiting that take the slot first:
	// wait for it, if not for long.
	if why := s.why(w, r, key, now); s.cfg.AffinityWait <= 0 || (why != reasonFull && why != "") || (pq != nil && pq.n >= maxAffineRounds*w.Slots) ||
		s.slotFreeIn(w, key, now) > s.cfg.AffinityWait {
		return nil, nil, false
	}
	if err := s.push(s.pinned, w.id, r, key, w.id, now); err != nil {
		return nil, err, true
	}
	wt := s.waiting[r.ID]
	wt.pinUntil = now.Add(s.cfg.AffinityWait)
	// It keeps its key's fair place among the model's requests: the
	// worker it waits for serves it before another key's request only
	// when the fair rule would.
	mq := s.queues[key]
	if mq == nil {
		mq = &queue{}
		s.queues[key] = mq
	}
	mq.reserve(wt, r.Weight)
	return nil, nil, true
}

// slotFreeIn is when w's oldest lease should end, by the model's service
// time; 0 when that is not known.
func (s *Scheduler) slotFreeIn(w *worker, key string, now time.Time) time.Duration {
	svc := s.service[key]
	if svc <= 0 {
		return 0
	}
	var oldest time.Time
	for _, l := range s.hiveLs[w.Hive] {
		if l.Worker == w.Name && (oldest.IsZero() || l.Granted.Before(oldest)) {
			oldest = l.Granted
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return max(oldest.Add(svc).Sub(now), 0)
}
