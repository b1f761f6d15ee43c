package scheduler

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHiveGone_FailsWhatOnlyItServed(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h1", []Worker{w("g/1", "shared", 1), w("g/2", "extra", 1)}, nil, t0)
	s.UpdateHive("h2", []Worker{w("g/1", "shared", 1)}, nil, t0)
	// Fill every slot, then queue one request for each model.
	for _, id := range []string{"a", "b"} {
		if g, err := s.Request(req(id, "shared"), t0); g == nil || err != nil {
			t.Fatalf("request %s: %v %v", id, g, err)
		}
	}
	if g, err := s.Request(req("c", "extra"), t0); g == nil || err != nil {
		t.Fatalf("request c: %v %v", g, err)
	}
	for _, id := range []string{"wait-shared", "wait-extra"} {
		model := strings.TrimPrefix(id, "wait-")
		if g, err := s.Request(req(id, model), t0); g != nil || err != nil {
			t.Fatalf("%s should wait: %v %v", id, g, err)
		}
	}

	fails := s.HiveGone("h1", "left", t0)
	if len(fails) != 1 || fails[0].Request.ID != "wait-extra" {
		t.Fatalf("failed %+v, want only the request for extra (shared has h2)", fails)
	}
	e := fails[0].Err
	if e.Status != 503 || e.Msg != "model extra: its only hive, h1, left" {
		t.Fatalf("refusal %d %q", e.Status, e.Msg)
	}
	for _, l := range s.Leases() {
		if l.Hive == "h1" {
			t.Fatalf("lease %+v on the departed hive survived", l)
		}
	}
	if s.Waiting() != 1 {
		t.Fatalf("%d waiting, want the request for shared still waiting for h2", s.Waiting())
	}
	if got := s.HiveGone("h1", "left", t0); got != nil {
		t.Fatalf("a second departure of the same hive failed %+v", got)
	}

	// New requests learn why, for a while; then it is just unknown.
	_, err := s.Request(req("later", "extra"), t0.Add(time.Second))
	var se *Error
	if !errors.As(err, &se) || se.Status != 503 || !strings.Contains(se.Msg, "its only hive, h1, left") {
		t.Fatalf("a new request for extra: %v, want the 503 naming the hive", err)
	}
	if _, err := s.Request(req("much-later", "extra"), t0.Add(goneFor+time.Second)); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("after %v: %v, want unknown model", goneFor, err)
	}
	// A hive serving it again ends the story at once.
	s.UpdateHive("h1", []Worker{w("g/2", "extra", 1)}, nil, t0.Add(2*time.Second))
	if g, err := s.Request(req("back", "extra"), t0.Add(2*time.Second)); g == nil || err != nil {
		t.Fatalf("extra back on h1: %v %v", g, err)
	}
}

// A request pinned to a worker of the hive that went (a Responses chain's
// next turn) fails with the same reason as the model's queue, not later with
// "not served".
func TestHiveGone_FailsPinnedRequests(t *testing.T) {
	s := New(Config{})
	s.SetWarm(true)
	s.UpdateHive("h1", []Worker{w("g/1", "m", 1)}, nil, t0)
	if g, err := s.Request(req("a", "m"), t0); g == nil || err != nil {
		t.Fatalf("request a: %v %v", g, err)
	}
	pinned := req("next-turn", "m")
	pinned.Hive, pinned.Worker = "h1", "g/1"
	if g, err := s.Request(pinned, t0); g != nil || err != nil {
		t.Fatalf("the pinned request should wait for the busy worker: %v %v", g, err)
	}
	fails := s.HiveGone("h1", "failed", t0)
	if len(fails) != 1 || fails[0].Request.ID != "next-turn" || !strings.Contains(fails[0].Err.Msg, "its only hive, h1, failed") {
		t.Fatalf("failures %+v, want the pinned request with the hive's reason", fails)
	}
	if s.Waiting() != 0 {
		t.Fatalf("%d still waiting", s.Waiting())
	}
}
