package main

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// TestE2E_HiveThatLeavesTakesItsWorkersAlong: a hive that leaves cleanly is
// out of scheduling at once; a request for a model only it served fails at
// once, saying so, instead of waiting for the queue timeout. Today's main made
// that request hang 32 s and end in "no queen answered".
func TestE2E_HiveThatLeavesTakesItsWorkersAlong(t *testing.T) {
	c := newCluster(t)
	worker := slowWorker(t, 0)
	q := c.start(nodeSpec{name: "q", extra: []string{"--roles", "queen"}})[0]
	rest := c.start(
		nodeSpec{name: "extra-hive", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", worker.URL + ",model=extra"}},
		nodeSpec{name: "e", join: q.gossipAddr, extra: []string{"--roles", "none", "--queue-timeout", "20s"}},
	)
	hive, e := rest[0], rest[1]
	c.waitAgree([]*proc{q, hive, e}, 20*time.Second)
	testutil.Every(50*time.Millisecond).Eventually(t, 20*time.Second, "extra served through e", modelServed(c, e))
	post := func() (int, string) {
		resp, err := http.Post("http://"+e.httpAddr+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"extra","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(); code != 200 {
		t.Fatalf("before the leave: %d %s", code, body)
	}
	hive.signal(t, syscall.SIGTERM, 20*time.Second)
	start := time.Now()
	code, body := post()
	took := time.Since(start)
	if code != 503 || !strings.Contains(body, "its only hive, extra-hive, left") {
		t.Fatalf("after the hive left: %d %s, want 503 naming the hive that left", code, body)
	}
	// The queue timeout is 20 s: an answer well before it came from the
	// departure, not from giving up.
	if took > 10*time.Second {
		t.Fatalf("the answer took %v: it waited instead of failing at once", took)
	}
	t.Logf("after the hive left: %d in %v: %s", code, took.Round(time.Millisecond), strings.TrimSpace(body))
}
