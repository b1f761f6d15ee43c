package main

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// TestOllama_GrantAhead: the real Ollama behind a queen granting ahead
// (--grant-ahead 1), a hive that
// declares it one slot and an entry-only node, with more clients than
// slots. One-token answers end in milliseconds, so the queen grants ahead:
// requests wait at the hive for the slot (its rbee_hive_slot_wait_seconds
// counts them) and every one gets Ollama's answer.
func TestOllama_GrantAhead(t *testing.T) {
	t.Parallel()
	base := foreignOllama(t, "tiny")
	c := newCluster(t)
	q := c.start(nodeSpec{name: "q", extra: []string{"--roles", "queen", "--queen-priority", "1", "--grant-ahead", "1"}})[0]
	rest := c.start(
		nodeSpec{name: "h", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", base + ",model=tiny,slots=1"}},
		nodeSpec{name: "e", join: q.gossipAddr, extra: []string{"--roles", "none"}},
	)
	h, e := rest[0], rest[1]
	c.waitAgree([]*proc{q, h, e}, 20*time.Second)
	// The hive reports its worker after joining: until then the queen
	// answers that nothing serves tiny.
	testutil.Eventually(t, 20*time.Second, "tiny served via e", modelSlots(c, e, 1))
	lc := newLCClient(c)
	// Ollama loads the model on the first request; the next ones teach
	// the queen that its requests are short.
	for i := range 3 {
		if r := lc.chat(e.httpAddr, "tiny", 1, 60*time.Second); r.err != nil || r.status != http.StatusOK {
			t.Fatalf("warm-up request %d: %v", i, r)
		}
	}
	const clients, each = 6, 10
	var wg sync.WaitGroup
	errs := make(chan string, clients*each)
	for range clients {
		wg.Go(func() {
			for range each {
				r := lc.chat(e.httpAddr, "tiny", 1, 60*time.Second)
				if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"system_fingerprint":"fp_ollama"`) {
					errs <- r.String()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waits := 0.0
	testutil.Eventually(t, 10*time.Second, "the hive's slot waits", func() error {
		resp, err := http.Get("http://" + h.httpAddr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		for line := range strings.Lines(b.String()) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "rbee_hive_slot_wait_seconds_count "); ok {
				waits, err = strconv.ParseFloat(v, 64)
				return err
			}
		}
		return fmt.Errorf("no rbee_hive_slot_wait_seconds_count in the hive's /metrics")
	})
	if waits == 0 {
		t.Fatalf("no request of %d waited at the hive: none was granted ahead", clients*each)
	}
	t.Logf("%.0f of %d requests waited at the hive for Ollama's slot", waits, clients*each)
}
