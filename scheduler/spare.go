package scheduler

import (
	"slices"
	"strconv"
	"time"
)

// Spare leases: an entry node holds a few leases granted ahead of its
// clients' requests, and starts a request on one without asking the queen:
// for a short request, the round trip to the queen is most of what routing
// it costs. They are lent only while nothing of the model waits, never
// from a worker's last free slot, and only for a model whose requests are
// short (StandbyBelow); as soon as a request of the model has to wait,
// those not yet used are taken back (Revokes), so they never hold a slot
// from a waiting request for more than the revoke's round trip.

// maxSparesPerAsk bounds one ask's grants (wsapi.MaxSpares).
const maxSparesPerAsk = 64

// Spare grants up to n spare leases for requests like r (its model and
// tenant; r.ID names the ask): none when r may not use one (caps, a batch
// class, a worker of its own, places to avoid, a conversation), when a
// request of its model waits, or when its model's requests take long or
// have not been timed yet.
func (s *Scheduler) Spare(r Request, n int, now time.Time) []Grant {
	n = min(n, maxSparesPerAsk)
	if n <= 0 || r.MaxConcurrent > 0 || r.PerMinute > 0 || classOf(r.Class) != ClassInteractive || r.pin() != "" ||
		len(r.Avoid) > 0 || len(r.Elsewhere) > 0 || r.Conversation != "" {
		return nil
	}
	key := RequestKey(r.Model)
	if svc := s.service[key]; svc <= 0 || svc >= s.cfg.StandbyBelow || s.waitsFor(key, now) {
		return nil
	}
	var grants []Grant
	for i := range n {
		w := s.pickSpare(key, r, now)
		if w == nil {
			break
		}
		sr := r
		sr.ID = r.ID + "." + strconv.Itoa(i)
		g := s.grant(w, sr, now)
		s.granted-- // a request is counted when it runs (NoteUses)
		l := s.leases[g.Lease.ID]
		l.Spare, l.spareKey = true, key
		g.Lease.Spare = true
		if s.spares == nil {
			s.spares = make(map[string]*Lease)
		}
		s.spares[l.ID] = l
		if s.revocable == nil {
			s.revocable = make(map[string]map[string]*Lease)
		}
		m := s.revocable[key]
		if m == nil {
			m = make(map[string]*Lease)
			s.revocable[key] = m
		}
		m[l.ID] = l
		grants = append(grants, g)
	}
	return grants
}

// pickSpare is the best worker of key that may take r with two slots free
// or more: the last free slot stays for a request from elsewhere, which
// would otherwise wait for a revoke. A scan: spare leases are asked for
// when a pool runs dry, not per request.
func (s *Scheduler) pickSpare(key string, r Request, now time.Time) *worker {
	var best *worker
	for _, w := range s.byKey[key] {
		if w.Slots-w.leases >= 2 && s.eligible(w, r, key, now) && (best == nil || better(w, best)) {
			best = w
		}
	}
	return best
}

// waitsFor reports whether a request of key waits: in its model's queue, or
// for one of its workers alone.
func (s *Scheduler) waitsFor(key string, now time.Time) bool {
	if q := s.queues[key]; q != nil && q.head(now, s.cfg.AgingAfter) != nil {
		return true
	}
	for _, w := range s.byKey[key] {
		if s.pinned[w.id].head(now, s.cfg.AgingAfter) != nil {
			return true
		}
	}
	return false
}

// revokeFor asks for the spare leases of key back: a request of the model
// waits. Those in the entry nodes' pools come back at once, those in use
// when their requests end.
func (s *Scheduler) revokeFor(key string) {
	for _, l := range s.revocable[key] {
		s.revoke(l)
	}
}

func (s *Scheduler) revoke(l *Lease) {
	if l.revoked || l.orphan {
		return
	}
	l.revoked = true
	s.unrevocable(l)
	if s.revokes == nil {
		s.revokes = make(map[string][]string)
	}
	s.revokes[l.Entry] = append(s.revokes[l.Entry], l.ID)
}

// unrevocable takes l out of its model's revocable spare leases: it was
// asked back, its entry node's session ended, or it ended.
func (s *Scheduler) unrevocable(l *Lease) {
	if m := s.revocable[l.spareKey]; m != nil {
		delete(m, l.ID)
		if len(m) == 0 {
			delete(s.revocable, l.spareKey)
		}
	}
}

// NoteConversation records that conv's last turn went to worker id
// (hive/group/instance) on a spare lease, which the scheduler did not
// grant: its next turn goes there. A worker it does not know is skipped.
func (s *Scheduler) NoteConversation(conv, id string) {
	if s.workers[id] != nil {
		s.rememberConversation(conv, id)
	}
}

// NoteUses counts n requests that entry nodes started on spare leases in
// Granted: the scheduler granted none of them, and they are requests.
func (s *Scheduler) NoteUses(n int64) {
	if n > 0 {
		s.granted += uint64(n)
	}
}

// NoteRan takes the time per request of model's requests that ran on spare
// leases (ended of them, ran in all) into the model's service time: they
// are most of its requests when spare leases serve it, and a model whose
// requests grew long must stop getting spare leases.
func (s *Scheduler) NoteRan(model string, ended int64, ran time.Duration) {
	if ended <= 0 || ran <= 0 {
		return
	}
	s.noteServiceKey(RequestKey(model), ran/time.Duration(ended))
}

// idleSpares counts w's spare leases that its hive's last report listed
// no use of: idle in an entry node's pool, as far as the queen knows.
func (s *Scheduler) idleSpares(w *worker) int {
	if len(s.spares) == 0 {
		return 0 // every report asks, for every worker
	}
	n := 0
	for _, l := range s.hiveLs[w.Hive] {
		if l.Spare && !l.listed && l.Worker == w.Name {
			n++
		}
	}
	return n
}

// Revokes returns, by entry node, the spare leases to take back since the
// last call, and forgets them.
func (s *Scheduler) Revokes() map[string][]string {
	r := s.revokes
	s.revokes = nil
	for _, ids := range r {
		slices.Sort(ids)
	}
	return r
}

// SpareUse is what an entry node says of a spare lease it releases.
type SpareUse struct {
	// Unused: it goes back without having served a request.
	Unused bool
	// Ran is how long its request ran; Conversation the conversation
	// the request continued, "" none.
	Ran          time.Duration
	Conversation string
}

// ReleaseSpare is Release for a lease released with what its entry node
// says of it: a spare lease's service time is its request's, not the time
// it waited at the entry node, and its conversation's next turn goes back
// to its worker. For any other lease it is Release.
func (s *Scheduler) ReleaseSpare(leaseID string, u SpareUse, now time.Time) []Grant {
	// Only a lease whose request just ran tells a service time and frees
	// a running slot; one that comes back from its pool (its uses went
	// with lease_uses) was idle.
	if l := s.leases[leaseID]; l != nil && l.Spare && !u.Unused && u.Ran > 0 {
		if w := s.byHive[l.Hive][l.Worker]; w != nil {
			s.noteService(w, u.Ran)
			s.slotFreed(w, now)
			if u.Conversation != "" {
				s.rememberConversation(u.Conversation, w.id)
			}
		}
	}
	return s.Release(leaseID, now) // which notes no run for a spare lease
}

// DropSpares takes back the spare leases of entry: its session ended, and
// the pool it held them in went with it. Each goes with the first report of
// its hive that lists no use of it: one may be in use that the last report
// did not show yet, and its slot is not free until the hive says so.
func (s *Scheduler) DropSpares(entry string) {
	for _, l := range s.spares {
		if l.Entry == entry {
			l.orphan = true
			s.unrevocable(l)
		}
	}
}
