package scheduler

import (
	"cmp"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The model lifecycle: hives report what they can start (their catalog), their
// GPUs, and the workers rbee started there (loading, ready, draining). A
// request for a model no ready worker serves waits while Place asks a hive
// with the model and room on a GPU to start one; the worker's ready report
// grants it like any freed slot. All of it comes from telemetry, so a new
// queen rebuilds loads in progress as it rebuilds leases.

// CatalogModel is one model a hive can start.
type CatalogModel struct {
	Name, Engine string
	Slots        int
	// VRAMMB is the footprint placement counts on (learned, configured or
	// estimated by the hive).
	VRAMMB uint64
	// LoadTime is the hive's last measured start-to-ready time, 0 if
	// never measured.
	LoadTime    time.Duration
	MaxReplicas int
	// Unavailable says why it cannot start at all.
	Unavailable string
	// Failures in a row, the last at FailedAt, and why: the hive backs
	// off (see Backoff).
	Failures   int
	FailedAt   time.Time
	FailReason string
}

// GPU is one of a hive's GPUs.
type GPU struct {
	Index                       int
	TotalMB, UsedMB, ReservedMB uint64
}

// Managed is a worker rbee started on a hive (its scheduler worker, once
// ready, is ManagedGroup/Instance).
type Managed struct {
	Instance, Model, State string
	Since                  time.Time
	GPUs                   []int
	VRAMMB                 uint64
	StartID                string
	LastUsed               time.Time
	Leases                 int
}

// Managed states, as wsapi.ManagedWorker.State.
const (
	ManagedLoading  = "loading"
	ManagedReady    = "ready"
	ManagedDraining = "draining"
	// ManagedGroup is the group of every worker rbee starts.
	ManagedGroup = "models"
)

// HiveModels is a hive's lifecycle report.
type HiveModels struct {
	Catalog []CatalogModel
	GPUs    []GPU
	Managed []Managed
}

// Start asks Hive to start Model on GPUs, after stopping the idle workers
// Evict (instances of ManagedGroup).
type Start struct {
	ID, Hive, Model string
	GPUs            []int
	Evict           []string
	VRAMMB          uint64
	// Reason says why, for the log: "cold" or "scale out: ...".
	Reason string
}

type hiveModels struct {
	HiveModels
	keys        [][]string      // ModelKeys of each catalog entry
	managedKeys [][]string      // ModelKeys of each managed worker
	draining    map[string]bool // worker names (group/instance) being drained
}

type pendingStart struct {
	Start
	key string
	at  time.Time
}

// Lifecycle tuning. A start the hive has not reported within pendingFor was
// lost (the message, or the hive); another may be placed then.
const (
	pendingFor    = 10 * time.Second
	backoffFirst  = 10 * time.Second
	backoffMax    = 5 * time.Minute
	startsPerMin  = 4
	evictHold     = 30 * time.Second
	unknownLoad   = 30 * time.Second
	serviceWeight = 0.2 // of the newest lease in the service-time average
)

// Backoff is how long a hive waits before starting a model again after
// failures starts in a row failed: 10 s, doubling, at most 5 min.
func Backoff(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := backoffFirst
	for i := 1; i < failures && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}

// UpdateModels takes a hive's lifecycle report: what it can start, its GPUs
// and the workers rbee runs there. Call it before UpdateHive with the same
// report, so that workers being stopped get no grants.
func (s *Scheduler) UpdateModels(hive string, hm HiveModels, now time.Time) {
	if s.models == nil {
		s.models = make(map[string]*hiveModels)
	}
	if len(hm.Catalog) == 0 && len(hm.GPUs) == 0 && len(hm.Managed) == 0 {
		delete(s.models, hive)
	} else {
		h := &hiveModels{HiveModels: hm, keys: make([][]string, len(hm.Catalog)), managedKeys: make([][]string, len(hm.Managed))}
		for i, c := range hm.Catalog {
			h.keys[i] = ModelKeys(c.Name)
		}
		for i, m := range hm.Managed {
			h.managedKeys[i] = ModelKeys(m.Model)
			if m.State == ManagedDraining {
				if h.draining == nil {
					h.draining = map[string]bool{}
				}
				h.draining[ManagedGroup+"/"+m.Instance] = true
			}
		}
		s.models[hive] = h
	}
	// A start the hive reports (loading or beyond), or whose failure it
	// recorded, is no longer pending.
	for id, p := range s.starts {
		if p.Hive != hive {
			continue
		}
		if slices.ContainsFunc(hm.Managed, func(m Managed) bool { return m.StartID == id }) {
			delete(s.starts, id)
			continue
		}
		for _, c := range hm.Catalog {
			if c.Name == p.Model && c.Failures > 0 && !c.FailedAt.Before(p.at.Add(-time.Second)) {
				delete(s.starts, id)
			}
		}
	}
}

// forgetModels drops a hive's lifecycle report and its pending starts (it
// left): a load it had under way is placed elsewhere.
func (s *Scheduler) forgetModels(hive string) {
	delete(s.models, hive)
	for id, p := range s.starts {
		if p.Hive == hive {
			delete(s.starts, id)
		}
	}
}

// stopping reports whether the worker named name on hive is being stopped:
// draining on its hive, or chosen for eviction by a start.
func (s *Scheduler) stopping(hive, name string, now time.Time) bool {
	if until, ok := s.evicting[hive+"/"+name]; ok {
		if now.Before(until) {
			return true
		}
		delete(s.evicting, hive+"/"+name)
	}
	h := s.models[hive]
	return h != nil && h.draining[name]
}

// catalogHas reports whether any hive can start a model for key, even if not
// now.
func (s *Scheduler) catalogHas(key string) bool {
	for _, h := range s.models {
		for _, ks := range h.keys {
			if slices.Contains(ks, key) {
				return true
			}
		}
	}
	return false
}

// candidate is a hive that can start a model for a key now.
type candidate struct {
	hive  string
	h     *hiveModels
	entry CatalogModel
}

// loadOf is a model's load in progress: a pending start or a loading worker.
type loadOf struct {
	hive  string
	since time.Time
	entry CatalogModel // on that hive, when known
}

// loading returns the loads in progress for key.
func (s *Scheduler) loading(key string) []loadOf {
	var out []loadOf
	for _, p := range s.starts {
		if p.key == key {
			out = append(out, loadOf{hive: p.Hive, since: p.at})
		}
	}
	for hive, h := range s.models {
		for i, m := range h.Managed {
			if m.State == ManagedLoading && slices.Contains(h.managedKeys[i], key) {
				l := loadOf{hive: hive, since: m.Since}
				if i := h.entryFor(key); i >= 0 {
					l.entry = h.Catalog[i]
				}
				out = append(out, l)
			}
		}
	}
	slices.SortFunc(out, func(a, b loadOf) int { return a.since.Compare(b.since) })
	return out
}

func (h *hiveModels) entryFor(key string) int {
	for i, ks := range h.keys {
		if slices.Contains(ks, key) {
			return i
		}
	}
	return -1
}

// replicas counts the workers rbee runs or is starting for key.
func (s *Scheduler) replicas(key string) int {
	n := 0
	for _, p := range s.starts {
		if p.key == key {
			n++
		}
	}
	for _, h := range s.models {
		for i := range h.Managed {
			if slices.Contains(h.managedKeys[i], key) {
				n++
			}
		}
	}
	return n
}

// candidates lists the hives that may start a model for key now: fresh,
// with an entry that can start and is not backing off, and under the
// entry's replica cap. blocked says why each other hive with the model may
// not, and retry is the soonest a backing-off one may try again.
func (s *Scheduler) candidates(key string, now time.Time) (out []candidate, blocked []string, retry time.Duration) {
	reps := -1
	for _, hive := range slices.Sorted(maps.Keys(s.models)) {
		h := s.models[hive]
		i := h.entryFor(key)
		if i < 0 {
			continue
		}
		e := h.Catalog[i]
		switch wait := e.FailedAt.Add(Backoff(e.Failures)).Sub(now); {
		case e.Unavailable != "":
			blocked = append(blocked, fmt.Sprintf("%s cannot start it: %s", hive, e.Unavailable))
		case now.Sub(s.hiveAt[hive]) > s.cfg.StaleAfter:
			blocked = append(blocked, hive+" stopped reporting")
		case e.Failures > 0 && wait > 0:
			blocked = append(blocked, fmt.Sprintf("it failed to start on %s (%s); next try in %s", hive, e.FailReason, wait.Round(time.Second)))
			if retry == 0 || wait < retry {
				retry = wait
			}
		default:
			if e.MaxReplicas > 0 {
				if reps < 0 {
					reps = s.replicas(key)
				}
				if reps >= e.MaxReplicas {
					blocked = append(blocked, fmt.Sprintf("%s: max_replicas %d reached", hive, e.MaxReplicas))
					continue
				}
			}
			out = append(out, candidate{hive: hive, h: h, entry: e})
		}
	}
	return out, blocked, retry
}

// blocked is why no hive may start a model now, and when one may again.
type blocked struct {
	why   string
	retry time.Duration
}

func (b *blocked) err(model string) *Error {
	if b == nil {
		return nil
	}
	return &Error{Status: http.StatusServiceUnavailable, Type: "model_unavailable", RetryAfter: max(b.retry, time.Second),
		Msg: fmt.Sprintf("model %s cannot start: %s", model, b.why)}
}

// cannotStart is the refusal for a request for key when no worker serves it,
// nothing is loading it, and no hive that has it may start it now (every one
// failed lately, or cannot start it at all); nil otherwise.
func (s *Scheduler) cannotStart(key, model string, now time.Time) *Error {
	return s.startBlocked(key, now).err(model)
}

// startBlocked is cannotStart's reason, nil when a request for key may wait.
func (s *Scheduler) startBlocked(key string, now time.Time) *blocked {
	if !s.catalogHas(key) || s.servesIt(key) || len(s.loading(key)) > 0 {
		return nil
	}
	cands, why, retry := s.candidates(key, now)
	if len(cands) > 0 {
		if s.startsLeft(key, now) > 0 {
			return nil
		}
		why = append(why, fmt.Sprintf("%d starts in the last minute", startsPerMin))
		retry = max(retry, time.Minute-now.Sub(s.startLog[key][0]))
	}
	return &blocked{why: strings.Join(why, "; "), retry: retry}
}

// servesIt reports whether a worker serves key: one that is not down and not
// being stopped, busy, failing for a moment or late with its report (it is
// forgotten after ForgetAfter). Such a model needs no start: a hive that
// misses a few reports must not fail its requests or start it elsewhere.
func (s *Scheduler) servesIt(key string) bool {
	for _, w := range s.byKey[key] {
		if w.health != unreachable && !w.stopping {
			return true
		}
	}
	return false
}

// startsLeft is how many more starts of key the cluster allows this minute:
// a model that can never start is tried a few times a minute, not in a storm.
func (s *Scheduler) startsLeft(key string, now time.Time) int {
	log := s.startLog[key]
	for len(log) > 0 && now.Sub(log[0]) >= time.Minute {
		log = log[1:]
	}
	if len(log) == 0 {
		delete(s.startLog, key)
	} else {
		s.startLog[key] = log
	}
	return startsPerMin - len(log)
}

// Place decides which models to start where: a model with waiting requests
// and no worker that may take them (cold), or one whose queue would drain
// later than a new worker could load (scale out). At most one load per model
// is under way at a time. It returns the starts to send to hives.
func (s *Scheduler) Place(now time.Time) []Start {
	if !s.warm {
		// A new queen that has not heard from every hive may not know
		// of a load under way.
		return nil
	}
	var out []Start
	for _, key := range s.waitingKeys() {
		q := s.queues[key]
		if q == nil || q.n == 0 || len(s.loading(key)) > 0 {
			continue
		}
		cands, _, _ := s.candidates(key, now)
		if len(cands) == 0 || s.startsLeft(key, now) <= 0 {
			continue
		}
		var st *Start
		if !s.servesIt(key) {
			st = s.placeOn(cands, true, now)
			if st != nil {
				st.Reason = "cold: no worker serves it"
			}
		} else if why := s.loadSooner(key, q.n, cands, now); why != "" {
			st = s.placeOn(cands, false, now)
			if st != nil {
				st.Reason = "scale out: " + why
			}
		}
		if st == nil {
			continue
		}
		s.seq++
		st.ID = s.cfg.LeasePrefix + "s" + strconv.FormatUint(s.seq, 36)
		s.starts[st.ID] = &pendingStart{Start: *st, key: key, at: now}
		s.startLog[key] = append(s.startLog[key], now)
		for _, inst := range st.Evict {
			id := st.Hive + "/" + ManagedGroup + "/" + inst
			s.evicting[id] = now.Add(evictHold)
			if w := s.workers[id]; w != nil {
				w.stopping = true
				s.reindex(w)
			}
		}
		out = append(out, *st)
	}
	return out
}

// loadSooner says why starting another worker for key beats waiting (the
// expected wait of the last of n waiting requests exceeds a hive's known
// load time), or "" when it does not or nothing is measured yet.
func (s *Scheduler) loadSooner(key string, n int, cands []candidate, now time.Time) string {
	svc := s.service[key]
	if svc <= 0 {
		return ""
	}
	slots, _ := s.liveSlots(key, now)
	wait := time.Duration(n) * svc / time.Duration(max(slots, 1))
	load := time.Duration(0)
	for _, c := range cands {
		l := c.entry.LoadTime
		if l <= 0 {
			l = unknownLoad
		}
		if load == 0 || l < load {
			load = l
		}
	}
	if load >= wait {
		return ""
	}
	return fmt.Sprintf("%d waiting, about %s to drain, a load takes about %s", n, wait.Round(100*time.Millisecond), load.Round(100*time.Millisecond))
}

// option is one way to place a model: a GPU of a hive, with what must be
// evicted first.
type option struct {
	c     candidate
	gpu   int // -1: no GPU (a hive that reports none)
	free  uint64
	evict []Managed
}

// placeOn picks the GPU with the most free VRAM that fits the model among
// the candidates; failing that, when evict is set, the one that needs the
// fewest least-recently-used idle workers stopped. A hive that reports no
// GPUs (CPU inference, no NVML) takes the model with no VRAM check, after
// every GPU with room.
func (s *Scheduler) placeOn(cands []candidate, evict bool, now time.Time) *Start {
	var fits, evicts []option
	for _, c := range cands {
		need := c.entry.VRAMMB
		if len(c.h.GPUs) == 0 {
			fits = append(fits, option{c: c, gpu: -1})
			continue
		}
		for _, g := range c.h.GPUs {
			free := s.freeOn(c.hive, g)
			if free >= need {
				fits = append(fits, option{c: c, gpu: g.Index, free: free})
				continue
			}
			if !evict {
				continue
			}
			idle := s.idleOn(c.hive, c.h, g.Index, now)
			got := free
			for i, m := range idle {
				got += m.VRAMMB
				if got >= need {
					evicts = append(evicts, option{c: c, gpu: g.Index, free: got, evict: idle[:i+1]})
					break
				}
			}
		}
	}
	var best *option
	for i := range fits {
		o := &fits[i]
		if best == nil || (best.gpu < 0 && o.gpu >= 0) || (o.gpu >= 0 && o.free > best.free) {
			best = o
		}
	}
	if best == nil {
		for i := range evicts {
			o := &evicts[i]
			if best == nil || len(o.evict) < len(best.evict) ||
				(len(o.evict) == len(best.evict) && o.evict[0].LastUsed.Before(best.evict[0].LastUsed)) {
				best = o
			}
		}
	}
	if best == nil {
		return nil
	}
	st := &Start{Hive: best.c.hive, Model: best.c.entry.Name, VRAMMB: best.c.entry.VRAMMB}
	if best.gpu >= 0 {
		st.GPUs = []int{best.gpu}
	}
	for _, m := range best.evict {
		st.Evict = append(st.Evict, m.Instance)
	}
	return st
}

// freeOn is a GPU's VRAM that placement may count on: what the hive says is
// free, less what loads it promised are still to take, less starts this
// scheduler sent there that the hive has not reported yet.
func (s *Scheduler) freeOn(hive string, g GPU) uint64 {
	used := g.UsedMB + g.ReservedMB
	for _, p := range s.starts {
		if p.Hive == hive && slices.Contains(p.GPUs, g.Index) {
			used += p.VRAMMB
		}
	}
	if used >= g.TotalMB {
		return 0
	}
	return g.TotalMB - used
}

// idleOn lists the workers rbee started on GPU gpu of hive that hold no
// lease and wait for nothing, least recently used first: what eviction may
// stop.
func (s *Scheduler) idleOn(hive string, h *hiveModels, gpu int, now time.Time) []Managed {
	var out []Managed
	for _, m := range h.Managed {
		if m.State != ManagedReady || m.Leases > 0 || !slices.Contains(m.GPUs, gpu) {
			continue
		}
		id := hive + "/" + ManagedGroup + "/" + m.Instance
		w := s.workers[id]
		if w == nil || w.leases > 0 || w.stopping || s.pinned[id] != nil {
			continue
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Managed) int {
		return cmp.Or(a.LastUsed.Compare(b.LastUsed), strings.Compare(a.Instance, b.Instance))
	})
	return out
}

// noteService folds one finished lease into its model's service time.
func (s *Scheduler) noteService(w *worker, d time.Duration) {
	if d <= 0 {
		return
	}
	if s.service == nil {
		s.service = make(map[string]time.Duration)
	}
	for _, k := range w.keys {
		if old := s.service[k]; old > 0 {
			s.service[k] = time.Duration(float64(old)*(1-serviceWeight) + float64(d)*serviceWeight)
		} else {
			s.service[k] = d
		}
	}
}

// ServiceTime is a model's measured time per lease, 0 before any ended.
func (s *Scheduler) ServiceTime(model string) time.Duration {
	return s.service[RequestKey(model)]
}

// WaitStatus is where one waiting request stands.
type WaitStatus struct {
	Request  Request
	Position int // 1 is next
	ETA      time.Duration
	// Loading is the hive starting a worker the request waits for, and
	// since when ("" when none).
	Loading      string
	LoadingSince time.Time
}

// Waits reports where each waiting request that asked for progress stands:
// its place in its model's queue (or its worker's, when it waits for one), when it should get a slot (its place times
// the model's service time over its slots, or what is left of a load under
// way), and the load it waits for.
func (s *Scheduler) Waits(now time.Time) []WaitStatus {
	var out []WaitStatus
	for _, key := range s.waitingKeys() {
		q := s.queues[key]
		slots, _ := s.liveSlots(key, now)
		svc := s.service[key]
		var load *loadOf
		if ls := s.loading(key); len(ls) > 0 {
			load = &ls[0]
		}
		pos := 0
		for _, wt := range q.order() {
			pos++
			if !wt.req.Progress {
				continue
			}
			st := WaitStatus{Request: wt.req, Position: pos}
			if slots > 0 && svc > 0 {
				st.ETA = time.Duration(pos) * svc / time.Duration(slots)
			}
			if load != nil {
				st.Loading, st.LoadingSince = load.hive, load.since
				if slots == 0 && load.entry.LoadTime > 0 {
					st.ETA = max(load.entry.LoadTime-now.Sub(load.since), 0) + time.Duration(pos-1)*svc/time.Duration(max(load.entry.Slots, 1))
				}
			}
			out = append(out, st)
		}
	}
	// Requests that wait for one worker (a Responses follow-up, a
	// conversation's turn): their place in its line, and its slots.
	for _, id := range slices.Sorted(maps.Keys(s.pinned)) {
		q := s.pinned[id]
		w := s.workers[id]
		pos := 0
		for _, wt := range q.order() {
			pos++
			if !wt.req.Progress {
				continue
			}
			st := WaitStatus{Request: wt.req, Position: pos}
			if svc := s.service[wt.key]; w != nil && svc > 0 {
				st.ETA = time.Duration(pos) * svc / time.Duration(max(w.Slots, 1))
			}
			out = append(out, st)
		}
	}
	return out
}

// liveSlots counts the slots, and the leases on them, of key's workers that
// may take requests at all (fresh, healthy, not being stopped).
func (s *Scheduler) liveSlots(key string, now time.Time) (slots, leases int) {
	for _, w := range s.byKey[key] {
		if now.Sub(w.seen) <= s.cfg.StaleAfter && w.health == healthy && !w.stopping {
			slots += w.Slots
			leases += w.leases
		}
	}
	return slots, leases
}

// ModelETA is how long a new request for model would wait now: everyone
// ahead of it times the service time over the slots; 0 when unknown.
func (s *Scheduler) ModelETA(model string, now time.Time) time.Duration {
	key := RequestKey(model)
	svc := s.service[key]
	if svc <= 0 {
		return 0
	}
	slots, leases := s.liveSlots(key, now)
	n := 0
	if q := s.queues[key]; q != nil {
		n = q.n
	}
	if slots == 0 || (n == 0 && leases < slots) {
		return 0
	}
	return time.Duration(n+1) * svc / time.Duration(slots)
}

// Starting lists the starts sent and not yet reported by their hive.
func (s *Scheduler) Starting() []Start {
	out := make([]Start, 0, len(s.starts))
	for _, p := range s.starts {
		out = append(out, p.Start)
	}
	slices.SortFunc(out, func(a, b Start) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// expireStarts forgets starts their hive never reported: the message or the
// hive was lost, and Place may try again.
func (s *Scheduler) expireStarts(now time.Time) {
	for id, p := range s.starts {
		if now.Sub(p.at) > pendingFor {
			delete(s.starts, id)
		}
	}
	for id, until := range s.evicting {
		if !now.Before(until) {
			delete(s.evicting, id)
			if w := s.workers[id]; w != nil {
				w.stopping = s.stopping(w.Hive, w.Name, now)
				s.reindex(w)
			}
		}
	}
}

// explainStart says, for a 503, how far the start of a model for key got.
func (s *Scheduler) explainStart(key string, now time.Time) string {
	if !s.catalogHas(key) {
		return ""
	}
	if ls := s.loading(key); len(ls) > 0 {
		return fmt.Sprintf("loading on %s for %s", ls[0].hive, now.Sub(ls[0].since).Round(100*time.Millisecond))
	}
	cands, blocked, _ := s.candidates(key, now)
	if len(cands) > 0 {
		var need uint64
		for _, c := range cands {
			need = max(need, c.entry.VRAMMB)
		}
		blocked = append(blocked, fmt.Sprintf("no GPU of %s has %d MiB free, even after stopping idle workers",
			strings.Join(candHives(cands), ", "), need))
	}
	return strings.Join(blocked, "; ")
}

func candHives(cs []candidate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.hive
	}
	return out
}

// CatalogModels lists every model some hive can start, by name, with the
// hives that have it; for /v1/models.
func (s *Scheduler) CatalogModels() map[string][]string {
	out := map[string][]string{}
	for _, hive := range slices.Sorted(maps.Keys(s.models)) {
		for _, c := range s.models[hive].Catalog {
			out[c.Name] = append(out[c.Name], hive)
		}
	}
	return out
}

// Model states in ModelStats.
const (
	StateLoaded      = "loaded"
	StateLoading     = "loading"
	StateAvailable   = "available"
	StateUnavailable = "unavailable"
)

// lifecycleStats adds the models only catalogs have to byName and gives
// every model its lifecycle state, service time and expected wait.
func (s *Scheduler) lifecycleStats(byName map[string]*ModelStats, now time.Time) {
	for name, hives := range s.CatalogModels() {
		key := RequestKey(name)
		var m *ModelStats
		for _, have := range byName {
			if RequestKey(have.Model) == key || slices.Contains(ModelKeys(have.Model), key) {
				m = have
				break
			}
		}
		if m == nil {
			m = &ModelStats{Model: name}
			byName[name] = m
		}
		m.Hives = hives
	}
	for _, m := range byName {
		key := RequestKey(m.Model)
		m.Service = s.service[key]
		m.ETA = s.ModelETA(m.Model, now)
		if ls := s.loading(key); len(ls) > 0 {
			m.Loading, m.LoadingSince = ls[0].hive, ls[0].since
		}
		switch {
		case m.Workers > 0:
			m.State = StateLoaded
		case m.Loading != "":
			m.State = StateLoading
		case len(m.Hives) == 0:
			// Requests wait for a model nobody serves yet (a new
			// queen, before its hives reported).
		default:
			m.State = StateAvailable
			if b := s.startBlocked(key, now); b != nil {
				m.State, m.Reason = StateUnavailable, b.why
			}
		}
	}
}
