package scheduler

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// Lease is one slot of one worker granted to one request.
type Lease struct {
	ID        string
	RequestID string
	Entry     string
	Hive      string
	Worker    string // group/instance on Hive
	Model     string
	Granted   time.Time
	// Confirmed is set once the hive lists the lease in its telemetry:
	// from then on the hive's word decides when it ends.
	Confirmed bool
	// Key is the request's API key name, "" when unknown (adopted).
	Key string
	// Standby: granted while every slot of the worker was leased
	// (Config.Standby); its hive holds the request until one frees.
	// Started is when it took a slot (zero until then).
	Standby bool
	Started time.Time
	// Spare: granted ahead of any request (spare.go), for requests of
	// spareKey; revoked once the entry node was asked to give it back;
	// listed while its hive's last report listed a use of it; orphan
	// once its entry node's session ended (it goes with the next report
	// of its hive that lists no use of it).
	Spare    bool
	spareKey string
	revoked  bool
	listed   bool
	orphan   bool
}

// ranFor is how long l ran on its worker by now, false when that is not
// known: a standby lease waited at its hive first, and may never have
// started.
func (l *Lease) ranFor(now time.Time) (time.Duration, bool) {
	if l.Spare {
		// It waited at its entry node first, for how long only the
		// entry node says (ReleaseSpare).
		return 0, false
	}
	if !l.Standby {
		return now.Sub(l.Granted), true
	}
	if l.Started.IsZero() {
		return 0, false
	}
	return now.Sub(l.Started), true
}

// slotFreed notes that a lease that ran on w has ended: its hive hands the
// slot to the oldest request waiting for w there, the oldest standby lease
// not yet started, which starts now.
func (s *Scheduler) slotFreed(w *worker, now time.Time) {
	if s.cfg.Standby == 0 {
		return // no standby lease to start: skip the scan on every release
	}
	var first *Lease
	for _, l := range s.hiveLs[w.Hive] {
		if l.Worker == w.Name && l.Standby && l.Started.IsZero() && (first == nil || l.Granted.Before(first.Granted)) {
			first = l
		}
	}
	if first != nil {
		first.Started = now
	}
}

// HiveLease is a lease a hive reports serving.
type HiveLease struct {
	ID        string
	Worker    string
	Model     string
	Entry     string
	RequestID string
	Since     time.Time
}

// Grant hands a lease to a request.
type Grant struct {
	Request Request
	Lease   Lease
}

// Release ends a lease and hands its slot to the next waiting request for the
// worker's model.
func (s *Scheduler) Release(leaseID string, now time.Time) []Grant {
	l := s.leases[leaseID]
	if l == nil {
		return nil
	}
	s.dropLease(l)
	w := s.byHive[l.Hive][l.Worker]
	if w == nil {
		return nil
	}
	// The wait of a standby lease at its hive is not service time: it
	// would double a saturated worker's, and turn granting ahead off for
	// models it suits.
	if d, ran := l.ranFor(now); ran {
		s.noteService(w, d)
		s.slotFreed(w, now)
	}
	if w.leases > 0 {
		w.leases--
		w.lastEnd = now
		s.reindex(w)
	}
	return s.fill(w, now, nil, true)
}

// fill grants waiting requests to w while it has free slots, and with
// standby set while it may take standby grants: the oldest waiting request
// among the names w's model answers to goes first.
func (s *Scheduler) fill(w *worker, now time.Time, grants []Grant, standby bool) []Grant {
	for {
		ahead := w.leases >= w.Slots
		if ahead && (!standby || !s.standbyOpen(w)) {
			return grants
		}
		var best *waiting
		if q := s.pinned[w.id]; q != nil {
			// A worker that changed its model since is left to Tick,
			// which moves what waited for it to the model's queue.
			// A conversation's turn whose wait for w has lapsed
			// is not granted ahead on w: Tick moves it to its
			// model's queue, where any worker may serve it.
			if h := q.head(now, s.cfg.AgingAfter); h != nil && slices.Contains(w.keys, h.key) && (!ahead || h.pinUntil.IsZero() || now.Before(h.pinUntil)) {
				best = h
			}
		}
		for _, k := range w.keys {
			q := s.queues[k]
			if q == nil {
				continue
			}
			// Across the names w answers to: the higher class, then
			// the older request; against a request waiting for its
			// conversation's worker, which holds a place in this
			// queue, by the fair rule.
			if h := q.head(now, s.cfg.AgingAfter); h != nil && (best == nil || before(h, best)) {
				best = h
			}
		}
		if best == nil {
			return grants
		}
		if ahead {
			g, ok := s.fillAhead(w, best, now)
			if !ok {
				return grants
			}
			grants = append(grants, g)
			continue
		}
		if why := s.why(w, best.req, best.key, now); why == reasonAvoided {
			// A continuation that must go elsewhere does not
			// hold w from the requests behind it.
			if best = s.firstTaking(w, now); best == nil {
				return grants
			}
		} else if why != "" {
			return grants
		}
		s.served(best)
		s.unwait(best)
		grants = append(grants, s.grant(w, best.req, now))
	}
}

// fillAhead grants best, the request w would serve next, as a standby
// grant on w; or, when a worker with a free slot may take it (a report just
// freed it), there. It reports false when best may not be granted ahead:
// its model's requests are too long for it, or w may not take it.
func (s *Scheduler) fillAhead(w *worker, best *waiting, now time.Time) (Grant, bool) {
	if !s.standbyFor(best.key) || s.whyWith(w, best.req, best.key, now, w.Slots+s.cfg.Standby) != "" {
		return Grant{}, false
	}
	to := w
	if best.pin == "" {
		// A free slot first; else the best worker to stand by on,
		// which need not be w: requests that waited while the model's
		// time was unknown would otherwise all stand by on whichever
		// worker freed a slot first, and a conversation's first turn
		// stays where it went.
		if p := s.pickElsewhere(best.key, best.req, now); p != nil {
			to = p
		} else if p := preferAway(best.req, func(r Request) *worker { return s.pickStandby(best.key, r, now) }); p != nil {
			to = p
		}
	}
	s.served(best)
	s.unwait(best)
	return s.grant(to, best.req, now), true
}

// firstTaking is the request w's model queues would serve first of those
// that w may take, nil when none may: the rare case of a head that avoids w.
func (s *Scheduler) firstTaking(w *worker, now time.Time) *waiting {
	var best *waiting
	for _, k := range w.keys {
		q := s.queues[k]
		if q == nil {
			continue
		}
		for _, wt := range q.order() {
			if wt.pin == "" && s.eligible(w, wt.req, wt.key, now) {
				if best == nil || before(wt, best) {
					best = wt
				}
				break
			}
		}
	}
	return best
}

func (s *Scheduler) grant(w *worker, r Request, now time.Time) Grant {
	s.seq++
	s.granted++
	ahead := w.leases >= w.Slots
	w.leases++
	w.lastGrant = s.seq
	w.grantedVRAM += s.need(w, r, RequestKey(r.Model))
	s.reindex(w)
	if r.Conversation != "" {
		s.rememberConversation(r.Conversation, w.id)
	}
	l := &Lease{ID: s.cfg.LeasePrefix + strconv.FormatUint(s.seq, 36), RequestID: r.ID, Entry: r.Entry,
		Hive: w.Hive, Worker: w.Name, Model: w.servedFor(RequestKey(r.Model)), Granted: now, Key: r.Key, Standby: ahead}
	if ahead && len(s.spares) > 0 {
		// Every slot is leased: spare leases idle in entry nodes'
		// pools hold slots this request could have (spare.go).
		s.revokeFor(RequestKey(r.Model))
	}
	s.addLease(l)
	return Grant{Request: r, Lease: *l}
}

func (s *Scheduler) addLease(l *Lease) {
	s.keyActive(l.Key, 1)
	s.leases[l.ID] = l
	if l.RequestID != "" {
		s.byReq[l.RequestID] = l.ID
	}
	m := s.hiveLs[l.Hive]
	if m == nil {
		m = make(map[string]*Lease)
		s.hiveLs[l.Hive] = m
	}
	m[l.ID] = l
}

func (s *Scheduler) dropLease(l *Lease) {
	if _, ok := s.leases[l.ID]; ok {
		s.keyActive(l.Key, -1)
	}
	delete(s.leases, l.ID)
	delete(s.spares, l.ID)
	s.unrevocable(l)
	if s.byReq[l.RequestID] == l.ID {
		delete(s.byReq, l.RequestID)
	}
	if m := s.hiveLs[l.Hive]; m != nil {
		delete(m, l.ID)
		if len(m) == 0 {
			delete(s.hiveLs, l.Hive)
		}
	}
}

// Leases returns the leases held now, sorted by id.
func (s *Scheduler) Leases() []Lease {
	out := make([]Lease, 0, len(s.leases))
	for _, l := range s.leases {
		out = append(out, *l)
	}
	slices.SortFunc(out, func(a, b Lease) int { return strings.Compare(a.ID, b.ID) })
	return out
}
