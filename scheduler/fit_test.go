package scheduler

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A model no hive could ever fit, every worker stopped, is unavailable with
// the reason and refused at once; a hive that joins with room makes it
// available again.
func TestRequest_NeverFitsIsRefusedAtOnce(t *testing.T) {
	multi := func(name string, vram uint64) CatalogModel {
		e := entry(name, vram)
		e.MultiGPU = true
		return e
	}
	cases := []struct {
		name string
		h1   HiveModels
		h2   HiveModels
		// reason is a part of the refusal, "" when the request must wait.
		reason string
	}{
		{name: "bigger than the largest GPU",
			h1:     HiveModels{Catalog: []CatalogModel{entry("m", 30000)}, GPUs: []GPU{gpu(0, 24000, 0), gpu(1, 16000, 0)}},
			reason: "h1 can never fit it: needs 30000 MiB, the largest placement offers 24000 MiB"},
		{name: "fits the largest GPU only when it is empty: waits",
			h1: HiveModels{Catalog: []CatalogModel{entry("m", 24000)}, GPUs: []GPU{gpu(0, 24000, 20000)}}},
		{name: "an engine that splits may use every GPU of the hive",
			h1: HiveModels{Catalog: []CatalogModel{multi("m", 40000)}, GPUs: []GPU{gpu(0, 24000, 0), gpu(1, 24000, 0)}}},
		{name: "bigger than all GPUs together",
			h1:     HiveModels{Catalog: []CatalogModel{multi("m", 50000)}, GPUs: []GPU{gpu(0, 24000, 0), gpu(1, 24000, 0)}},
			reason: "needs 50000 MiB, the largest placement offers 48000 MiB"},
		{name: "a split takes an even share of each GPU: mixed sizes offer less than their sum",
			h1:     HiveModels{Catalog: []CatalogModel{multi("m", 100000)}, GPUs: []GPU{gpu(0, 81920, 0), gpu(1, 24576, 0)}},
			reason: "needs 100000 MiB, the largest placement offers 81920 MiB"},
		{name: "mixed sizes: three alike beat the big one alone",
			h1: HiveModels{Catalog: []CatalogModel{multi("m", 90000)}, GPUs: []GPU{gpu(0, 81920, 0), gpu(1, 32768, 0), gpu(2, 32768, 0)}}},
		{name: "a hive with no GPUs is not judged",
			h1: HiveModels{Catalog: []CatalogModel{entry("m", 900000)}}},
		{name: "another hive with a bigger GPU",
			h1: HiveModels{Catalog: []CatalogModel{entry("m", 30000)}, GPUs: []GPU{gpu(0, 24000, 0)}},
			h2: HiveModels{Catalog: []CatalogModel{entry("m", 30000)}, GPUs: []GPU{gpu(0, 80000, 70000)}}},
		{name: "every hive too small: each says so",
			h1:     HiveModels{Catalog: []CatalogModel{entry("m", 30000)}, GPUs: []GPU{gpu(0, 24000, 0)}},
			h2:     HiveModels{Catalog: []CatalogModel{entry("m", 30000)}, GPUs: []GPU{gpu(0, 16000, 0)}},
			reason: "h1 can never fit it: needs 30000 MiB, the largest placement offers 24000 MiB; h2 can never fit it: needs 30000 MiB, the largest placement offers 16000 MiB"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			s.SetWarm(true)
			report(s, "h1", tc.h1, t0)
			if tc.h2.Catalog != nil {
				report(s, "h2", tc.h2, t0)
			}
			g, err := s.Request(req("r", "m"), t0)
			state, reason := modelState(s, "m", t0)
			if tc.reason == "" {
				if g != nil || err != nil {
					t.Fatalf("request: grant %v err %v, want it to wait", g, err)
				}
				if state != StateAvailable {
					t.Fatalf("state %q (%s), want %q", state, reason, StateAvailable)
				}
				return
			}
			var se *Error
			if !errors.As(err, &se) || se.Status != 503 || se.Type != "model_unavailable" || !strings.Contains(se.Msg, tc.reason) {
				t.Fatalf("request: grant %v err %v, want a 503 model_unavailable with %q", g, err, tc.reason)
			}
			if state != StateUnavailable || !strings.Contains(reason, tc.reason) {
				t.Fatalf("state %q reason %q, want %q with %q", state, reason, StateUnavailable, tc.reason)
			}
		})
	}
}

// A hive with a bigger GPU joining makes a model that fitted nowhere
// available; the requests refused before it are not held.
func TestRequest_NeverFitsReevaluatedWhenAHiveJoins(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	report(s, "h1", HiveModels{Catalog: []CatalogModel{entry("m", 30000)}, GPUs: []GPU{gpu(0, 24000, 0)}}, t0)
	if _, err := s.Request(req("a", "m"), t0); err == nil {
		t.Fatal("request before the big hive joined waits, want a 503")
	}
	if st, _ := modelState(s, "m", t0); st != StateUnavailable {
		t.Fatalf("state %q, want unavailable", st)
	}
	now := t0.Add(time.Second)
	report(s, "h2", HiveModels{Catalog: []CatalogModel{entry("m", 30000)}, GPUs: []GPU{gpu(0, 80000, 0)}}, now)
	if g, err := s.Request(req("b", "m"), now); g != nil || err != nil {
		t.Fatalf("request after the big hive joined: %v %v, want it to wait", g, err)
	}
	if st, why := modelState(s, "m", now); st != StateLoading && st != StateAvailable {
		t.Fatalf("state %q (%s), want available", st, why)
	}
	starts := s.Place(now)
	if len(starts) != 1 || starts[0].Hive != "h2" {
		t.Fatalf("starts %+v, want one on h2", starts)
	}
}

func modelState(s *Scheduler, model string, now time.Time) (state, reason string) {
	for _, m := range s.Models(now) {
		if m.Model == model {
			return m.State, m.Reason
		}
	}
	return "", ""
}
