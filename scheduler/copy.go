package scheduler

import (
	"maps"
	"slices"
	"time"
)

// Copies: a hive whose catalog entry is shared (its --share-models, or
// share=true) lets other hives copy the model's files from it. A hive that
// takes copies (it reports CopyEngines: it has a --models-dir) and lacks the
// model is a candidate to start it too, after copying the files; placement
// takes such a candidate only when no hive that has the files can take the
// model without evicting, then before evicting (the only hive with the file
// has no room, or a scale-out needs another hive).

// copyCandidates lists the hives that could start key after copying its
// files from the fresh hives that share it.
func (s *Scheduler) copyCandidates(key string, now time.Time) []candidate {
	var from []string
	var shared CatalogModel
	for _, hive := range slices.Sorted(maps.Keys(s.models)) {
		h := s.models[hive]
		if i := h.entryFor(key); i >= 0 && h.Catalog[i].Shared && now.Sub(s.hiveAt[hive]) <= s.cfg.StaleAfter {
			if len(from) == 0 {
				shared = h.Catalog[i]
			}
			from = append(from, hive)
		}
	}
	if len(from) == 0 {
		return nil
	}
	var out []candidate
	for _, hive := range slices.Sorted(maps.Keys(s.models)) {
		h := s.models[hive]
		if h.entryFor(key) >= 0 || !slices.Contains(h.CopyEngines, shared.Engine) || now.Sub(s.hiveAt[hive]) > s.cfg.StaleAfter {
			continue
		}
		e := shared
		// What went wrong on the hive it comes from is not this one's;
		// a copy that failed here is in this hive's own entry.
		e.Failures, e.FailedAt, e.FailReason, e.Unavailable, e.Shared = 0, time.Time{}, "", "", false
		if !fitsEver(h.GPUs, e) {
			continue
		}
		out = append(out, candidate{hive: hive, h: h, entry: e, copyFrom: slices.Clone(from)})
	}
	return out
}

// placeCopying is placeOn preferring the hives that have the model's files:
// a copy is placed only when none of them can take it without evicting,
// and before any of them evicts.
func (s *Scheduler) placeCopying(cands []candidate, evict bool, now time.Time) *Start {
	var have, copies []candidate
	for _, c := range cands {
		if len(c.copyFrom) > 0 {
			copies = append(copies, c)
		} else {
			have = append(have, c)
		}
	}
	if st := s.placeOn(have, false, now); st != nil || len(copies) == 0 && !evict {
		return st
	}
	if st := s.placeOn(copies, false, now); st != nil {
		return st
	}
	if !evict {
		return nil
	}
	if st := s.placeOn(have, true, now); st != nil {
		return st
	}
	return s.placeOn(copies, true, now)
}
