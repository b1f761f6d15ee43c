package scheduler

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// goneFor is how long a model whose last hive departed answers with why,
// rather than "not served": long enough for clients that retry to learn
// what happened, short enough not to lie after someone starts it elsewhere
// (a worker reporting the model ends it at once).
const goneFor = time.Minute

// goneModel remembers why a model lost its last worker.
type goneModel struct {
	model string // as its workers served it
	why   string
	until time.Time
}

// HiveGone takes a hive that left or failed out of scheduling at once: its
// workers get no new requests and its leases are gone. A model that had no
// worker elsewhere fails its waiting requests now, and new ones for a minute,
// with a 503 that says what happened (why is "left", "failed", ...), instead
// of waiting for a worker that will not come back.
func (s *Scheduler) HiveGone(hive, why string, now time.Time) []Failure {
	_, known := s.byHive[hive]
	if !known && s.models[hive] == nil {
		return nil
	}
	var keys []string
	models := map[string]string{} // key -> a model the hive served or could start
	add := func(ks []string, model string) {
		for _, k := range ks {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
			if m, ok := models[k]; !ok || model < m {
				models[k] = model
			}
		}
	}
	for _, w := range s.byHive[hive] {
		for _, m := range w.served() {
			add(ModelKeys(m), m)
		}
	}
	// What it could start or was loading counts too: a request waiting on
	// a load the hive had under way learns that the hive went, with a 503,
	// not that the model was never served (404).
	if h := s.models[hive]; h != nil {
		for i, ks := range h.keys {
			add(ks, h.Catalog[i].Name)
		}
		for i, ks := range h.managedKeys {
			add(ks, h.Managed[i].Model)
		}
	}
	for _, p := range s.starts {
		if p.Hive == hive {
			add([]string{p.key}, p.Model)
		}
	}
	s.RemoveHive(hive)
	var fails []Failure
	for _, key := range keys {
		if len(s.byKey[key]) > 0 || s.catalogHas(key) {
			continue // others serve it, or may start it: its waiting requests wait
		}
		if s.gone == nil {
			s.gone = make(map[string]goneModel)
		}
		g := goneModel{model: models[key], why: fmt.Sprintf("its only hive, %s, %s", hive, why), until: now.Add(goneFor)}
		s.gone[key] = g
		// Requests pinned to one of the hive's workers (a Responses chain)
		// wait for the same model: they fail with the same reason, now.
		qs := []*queue{s.queues[key]}
		for id, q := range s.pinned {
			if strings.HasPrefix(id, hive+"/") {
				qs = append(qs, q)
			}
		}
		for _, q := range qs {
			if q == nil {
				continue
			}
			var gone []*waiting
			q.each(func(wt *waiting) {
				if wt.key == key {
					gone = append(gone, wt)
				}
			})
			for _, wt := range gone {
				fails = append(fails, Failure{Request: wt.req, Err: g.err(wt.req.Model)})
				s.unwait(wt)
			}
		}
	}
	slices.SortFunc(fails, func(a, b Failure) int { return strings.Compare(a.Request.ID, b.Request.ID) })
	return fails
}

func (g goneModel) err(model string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: "model_unavailable",
		Msg: fmt.Sprintf("model %s: %s", model, g.why)}
}

// goneErr is the refusal for a model no worker serves whose last hive went
// recently, nil otherwise. A worker serving it again ends the record.
func (s *Scheduler) goneErr(key, model string, now time.Time) *Error {
	g, ok := s.gone[key]
	switch {
	case !ok:
		return nil
	case len(s.byKey[key]) > 0 || !now.Before(g.until):
		delete(s.gone, key)
		return nil
	}
	return g.err(model)
}

// Hives lists the hives the scheduler knows.
func (s *Scheduler) Hives() []string {
	return slices.Sorted(maps.Keys(s.byHive))
}
