package scheduler

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Tick does what time does: it fails requests past their deadline (and, once
// warm, those for models no worker serves), reclaims leases never listed by a
// hive, forgets silent hives, and grants what that freed.
func (s *Scheduler) Tick(now time.Time) ([]Grant, []Failure) {
	s.unpinLapsed(now)
	s.expireStarts(now)
	var fails []Failure
	refused := map[string]*blocked{} // startBlocked by key, once per tick
	catalogs := map[string]bool{}    // catalogHas by key, once per tick
	hasCatalog := func(key string) bool {
		v, ok := catalogs[key]
		if !ok {
			v = s.catalogHas(key)
			catalogs[key] = v
		}
		return v
	}
	for _, w := range s.waiting {
		var cerr *Error
		if w.pin == "" && s.warm {
			b, seen := refused[w.key]
			if !seen {
				b = s.startBlocked(w.key, now)
				refused[w.key] = b
			}
			cerr = b.err(w.req.Model)
		}
		switch {
		case !now.Before(w.req.Deadline):
			fails = append(fails, Failure{Request: w.req, Err: &Error{Status: http.StatusServiceUnavailable, Type: "timeout",
				Msg: fmt.Sprintf("no worker for model %q became free in time (%s)", w.req.Model, s.Explain(w.req.Model, now))}})
			s.unwait(w)
		case cerr != nil:
			fails = append(fails, Failure{Request: w.req, Err: cerr})
			s.unwait(w)
		case s.warm && len(s.byKey[w.key]) == 0 && !hasCatalog(w.key):
			fails = append(fails, Failure{Request: w.req, Err: &Error{Status: http.StatusNotFound, Type: "model_not_found",
				Msg: fmt.Sprintf("model %q is not served by this cluster (GET /v1/models lists what is)", w.req.Model)}})
			s.unwait(w)
		case s.warm && s.allDown(w.key, now) && !hasCatalog(w.key):
			fails = append(fails, Failure{Request: w.req, Err: s.downErr(w.req.Model, now)})
			s.unwait(w)
		}
	}
	for hive, at := range s.hiveAt {
		if now.Sub(at) > s.cfg.ForgetAfter {
			fails = append(fails, s.HiveGone(hive, "stopped reporting", now)...)
		}
	}
	slices.SortFunc(fails, func(a, b Failure) int { return strings.Compare(a.Request.ID, b.Request.ID) })
	var freed []*worker
	for _, l := range s.leases {
		// A spare lease is its entry node's to release, or goes with
		// its session (DropSpares): one unused for longer than this is
		// what the entry node holds in its pool.
		if (!l.Confirmed && !l.Spare && now.Sub(l.Granted) > s.cfg.LeaseStartTimeout) || (l.orphan && now.Sub(s.hiveAt[l.Hive]) > s.cfg.StaleAfter) {
			s.dropLease(l)
			if w := s.byHive[l.Hive][l.Worker]; w != nil {
				w.leases = max(w.leases-1, 0)
				w.lastEnd = now
				s.reindex(w)
				freed = append(freed, w)
			}
		}
	}
	// Workers that turned fresh, healthy or unsaturated since the last
	// grant may serve waiting requests too.
	var grants []Grant
	for _, key := range s.waitingKeys() {
		freed = append(freed, s.byKey[key]...)
	}
	freed = append(freed, s.pinnedWorkers()...)
	for _, standby := range []bool{false, true} {
		for _, w := range freed {
			grants = s.fill(w, now, grants, standby)
		}
	}
	return grants, fails
}
