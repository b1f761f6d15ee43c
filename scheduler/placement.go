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

// candidate is a hive that can start a model for a key now.
type candidate struct {
	hive  string
	h     *hiveModels
	entry CatalogModel
	// copyFrom: the hive lacks the model's files and would copy them
	// from these hives, which share it (copy.go).
	copyFrom []string
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
		case !fitsEver(h.GPUs, e):
			blocked = append(blocked, fmt.Sprintf("%s can never fit it: needs %d MiB, the largest placement offers %d MiB",
				hive, e.VRAMMB, largestPlacement(h.GPUs, e)))
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
	return append(out, s.copyCandidates(key, now)...), blocked, retry
}

// largestPlacement is the most VRAM a placement of e on a hive with gpus
// could ever get, every other worker stopped: its largest GPU, or, for an
// engine that splits a model across GPUs with an even share on each, n
// times the n-th largest GPU at best (all of them, when they are alike).
func largestPlacement(gpus []GPU, e CatalogModel) uint64 {
	totals := make([]uint64, len(gpus))
	for i, g := range gpus {
		totals[i] = g.TotalMB
	}
	slices.SortFunc(totals, func(a, b uint64) int { return cmp.Compare(b, a) })
	var best uint64
	for i, t := range totals {
		if i > 0 && !e.MultiGPU {
			break
		}
		best = max(best, uint64(i+1)*t)
	}
	return best
}

// fitsEver reports whether e could ever be placed on a hive with gpus. A
// hive that reports no GPUs (CPU inference, no NVML) is not checked.
func fitsEver(gpus []GPU, e CatalogModel) bool {
	return len(gpus) == 0 || e.VRAMMB <= largestPlacement(gpus, e)
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
			st = s.placeCopying(cands, true, now)
			if st != nil {
				st.Reason = "cold: no worker serves it"
			}
		} else if why := s.loadSooner(key, q.n, cands, now); why != "" {
			st = s.placeCopying(cands, false, now)
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

// option is one way to place a model: a GPU of a hive (or, for an engine
// that splits, several taking an even share each), with what must be
// evicted first.
type option struct {
	c     candidate
	gpu   int   // -1: no GPU (a hive that reports none)
	gpus  []int // several GPUs, when split; gpu is the first
	free  uint64
	evict []Managed
}

// placeOn picks the GPU with the most free VRAM that fits the model among
// the candidates; failing that, for an engine that splits a model across
// GPUs, the fewest GPUs of one hive that fit it together (an even share on
// each); failing that, when evict is set, the one GPU that needs the fewest
// least-recently-used idle workers stopped. A hive that reports no GPUs (CPU
// inference, no NVML) takes the model with no VRAM check, after every GPU
// (or split) with room.
func (s *Scheduler) placeOn(cands []candidate, evict bool, now time.Time) *Start {
	var fits, splits, evicts []option
	for _, c := range cands {
		need := c.entry.VRAMMB
		if len(c.h.GPUs) == 0 {
			fits = append(fits, option{c: c, gpu: -1})
			continue
		}
		if c.entry.MultiGPU {
			if o, ok := s.splitOn(c); ok {
				splits = append(splits, o)
			}
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
				got += shareOf(m.VRAMMB, len(m.GPUs))
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
	if best == nil || best.gpu < 0 {
		// A split over GPUs before a hive with none.
		var split *option
		for i := range splits {
			o := &splits[i]
			if split == nil || len(o.gpus) < len(split.gpus) || (len(o.gpus) == len(split.gpus) && o.free > split.free) {
				split = o
			}
		}
		if split != nil {
			best = split
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
	if len(best.c.copyFrom) > 0 {
		st.Copy = &Copy{From: best.c.copyFrom, Engine: best.c.entry.Engine, Slots: best.c.entry.Slots}
	}
	switch {
	case len(best.gpus) > 0:
		st.GPUs = best.gpus
	case best.gpu >= 0:
		st.GPUs = []int{best.gpu}
	}
	for _, m := range best.evict {
		st.Evict = append(st.Evict, m.Instance)
	}
	return st
}

// splitOn finds the fewest GPUs of c's hive (two or more) that fit c's
// model together with an even share on each, as tensor parallelism splits
// it: the GPUs with the most free VRAM, in index order. free is the least
// free among them.
func (s *Scheduler) splitOn(c candidate) (option, bool) {
	type gf struct {
		index int
		free  uint64
	}
	gs := make([]gf, len(c.h.GPUs))
	for i, g := range c.h.GPUs {
		gs[i] = gf{g.Index, s.freeOn(c.hive, g)}
	}
	slices.SortStableFunc(gs, func(a, b gf) int { return cmp.Or(cmp.Compare(b.free, a.free), cmp.Compare(a.index, b.index)) })
	for n := 2; n <= len(gs); n++ {
		share := shareOf(c.entry.VRAMMB, n)
		if gs[n-1].free < share {
			continue
		}
		idx := make([]int, n)
		for i := range n {
			idx[i] = gs[i].index
		}
		slices.Sort(idx)
		return option{c: c, gpu: idx[0], gpus: idx, free: gs[n-1].free}, true
	}
	return option{}, false
}

// shareOf is what a model of vram MiB split evenly over n GPUs takes on
// each, rounded up.
func shareOf(vram uint64, n int) uint64 {
	if n <= 1 {
		return vram
	}
	return (vram + uint64(n) - 1) / uint64(n)
}

// freeOn is a GPU's VRAM that placement may count on: what the hive says is
// free, less what loads it promised are still to take, less starts this
// scheduler sent there that the hive has not reported yet (their share of
// it, for a start split over several GPUs).
func (s *Scheduler) freeOn(hive string, g GPU) uint64 {
	used := g.UsedMB + g.ReservedMB
	for _, p := range s.starts {
		if p.Hive == hive && slices.Contains(p.GPUs, g.Index) {
			used += shareOf(p.VRAMMB, len(p.GPUs))
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
