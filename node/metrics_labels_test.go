package node_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
)

// TestMetrics_ModelLabelsStayBounded: however clients spell a served model
// or name unknown ones, in refusals (403, 404, 429) and in requests whose
// client left while waiting (499), /metrics labels models only by the name
// the cluster serves them under, or "other".
func TestMetrics_ModelLabelsStayBounded(t *testing.T) {
	const served = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
	const bob, carol = "sk-bob-000001", "sk-carol-0001"
	w1 := newFakeWorker(t, "w1")
	w1.setHold(true)
	// No affinity: every request here says "hi", and would wait for the
	// worker that served the first instead of filling the model's queue.
	a := nodetest.Start(t, "a", nodetest.WithCollector(workersOf(served, 1, w1)), nodetest.WithQueue(1, time.Minute),
		withKeysFile(t, tenant{name: "bob", key: bob}, tenant{name: "carol", key: carol, models: []string{"qwen*"}}),
		func(cfg *node.Config) { cfg.AffinityWait = -1 })
	testutil.Eventually(t, 10*time.Second, "worker known", func() error {
		if qs := mustQueues(a); len(qs) != 1 || qs[0].Slots != 1 {
			return fmt.Errorf("queues %+v", qs)
		}
		return nil
	})
	// One request holds the slot, a second fills the queue: every later
	// one for the model is refused at once (429).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = sendAs(ctx, a.HTTPAddr(), api.PathChat, bob, chat(served, true))
		done <- struct{}{}
	}()
	w1.waitInFlight(t, 1)
	go func() {
		_, _ = sendAs(ctx, a.HTTPAddr(), api.PathChat, bob, chat("  LLAMA-3.2-1b-instruct", false))
		done <- struct{}{}
	}()
	testutil.Eventually(t, 5*time.Second, "second request queued", func() error {
		if qs := mustQueues(a); len(qs) != 1 || qs[0].Waiting != 1 {
			return fmt.Errorf("queues %+v", qs)
		}
		return nil
	})
	before := scrape(t, a)
	// Spellings of the served model: case and spaces (the queen trims and
	// lower-cases), every one distinct.
	n := *labelRequests
	base := "llama-3.2-1b-instruct"
	for i := range n {
		sp := []byte(base)
		for j, bit := 0, 0; j < len(sp); j++ {
			if sp[j] >= 'a' && sp[j] <= 'z' {
				if i>>bit&1 == 1 {
					sp[j] -= 'a' - 'A'
				}
				bit++
			}
		}
		spelling := strings.Repeat(" ", i%3) + string(sp) + strings.Repeat(" ", i/3%2)
		for _, c := range []struct {
			key, model string
			status     int
		}{
			{bob, spelling, http.StatusTooManyRequests},
			{carol, spelling, http.StatusForbidden},
			{bob, fmt.Sprintf("no-such-model-%d", i), http.StatusNotFound},
		} {
			r, err := sendAs(context.Background(), a.HTTPAddr(), api.PathChat, c.key, chat(c.model, false))
			if err != nil || r.status != c.status {
				t.Fatalf("%q for %q: %d %q %v, want %d", c.key, c.model, r.status, r.body, err, c.status)
			}
		}
	}
	refused := scrape(t, a)
	t.Logf("/metrics grew %d bytes (%d lines) over %d refusals", len(refused)-len(before),
		lineCount(refused)-lineCount(before), 3*n)
	// The waiting request's client leaves: 499, labelled by the name the
	// first request's grant taught the entry node.
	cancel()
	<-done
	<-done
	gone := `rbee_requests_total{code="499",key="bob",model="` + served + `"} `
	testutil.Eventually(t, 20*time.Second, "the 499 counted", func() error {
		if m := scrape(t, a); !strings.Contains(m, gone) {
			return fmt.Errorf("no %s in\n%s", gone, grepLines(m, "rbee_requests_total"))
		}
		return nil
	})
	after := scrape(t, a)
	labels := map[string]bool{}
	for _, line := range strings.Split(after, "\n") {
		if !strings.HasPrefix(line, "rbee_") {
			continue
		}
		if _, v, ok := strings.Cut(line, `model="`); ok {
			v, _, _ = strings.Cut(v, `"`)
			labels[v] = true
		}
	}
	for l := range labels {
		if l != served && l != "other" && l != "" {
			t.Errorf("model label %q on /metrics: want only %q, \"other\" or none", l, served)
		}
	}
	for _, want := range []string{
		`rbee_requests_total{code="429",key="bob",model="` + served + `"} ` + fmt.Sprint(n),
		`rbee_requests_total{code="403",key="carol",model="` + served + `"} ` + fmt.Sprint(n),
		`rbee_requests_total{code="404",key="bob",model="other"} ` + fmt.Sprint(n),
	} {
		if !strings.Contains(after, want+"\n") {
			t.Errorf("no %s in\n%s", want, grepLines(after, "rbee_requests_total"))
		}
	}
}

// scrape reads node n's /metrics.
func scrape(t testing.TB, n *nodetest.Node) string {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func lineCount(s string) int { return strings.Count(s, "\n") }

// labelRequests is how many spellings TestMetrics_ModelLabelsStayBounded
// sends of each kind (-label-requests=10000 measures what /metrics would
// keep of ten thousand).
var labelRequests = flag.Int("label-requests", 300, "spellings of each kind TestMetrics_ModelLabelsStayBounded sends")

// TestMetrics_AClientThatLeavesBeforeItsAnswerIs499: a request is at a
// worker of its entry node's own hive when its client leaves, before the
// worker answers: it is counted 499, as when the hive is another node. It
// was counted nowhere (TestMetrics_ModelLabelsStayBounded missed its 499
// when the waiting request got the freed slot just before its client's
// leaving was noticed).
func TestMetrics_AClientThatLeavesBeforeItsAnswerIs499(t *testing.T) {
	const served = "m1"
	w1 := newFakeWorker(t, "w1")
	w1.setHold(true)
	a := nodetest.Start(t, "a", nodetest.WithCollector(workersOf(served, 1, w1)))
	testutil.Eventually(t, 10*time.Second, "worker known", func() error {
		if qs := mustQueues(a); len(qs) != 1 || qs[0].Slots != 1 {
			return fmt.Errorf("queues %+v", qs)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = sendAs(ctx, a.HTTPAddr(), api.PathChat, "", chat(served, false))
	}()
	w1.waitInFlight(t, 1)
	cancel()
	<-done
	testutil.Eventually(t, 10*time.Second, "the 499 counted", func() error {
		m := scrape(t, a)
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, "rbee_requests_total{") && strings.Contains(l, `code="499"`) && strings.Contains(l, `model="`+served+`"`) {
				return nil
			}
		}
		return fmt.Errorf("no 499 of %s in\n%s", served, grepLines(m, "rbee_requests_total"))
	})
}
