package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// fakeWorker is a minimal OpenAI-compatible server that records how many
// requests it serves at once. hold, when set, keeps every request open until
// it is closed (or the request is cancelled).
type fakeWorker struct {
	name     string
	srv      *httptest.Server
	inFlight atomic.Int32
	peak     atomic.Int32
	arrived  atomic.Int32
	served   atomic.Int32
	canceled atomic.Int32
	mu       sync.Mutex
	hold     chan struct{}
	// abort makes streaming requests break after the first event.
	abort atomic.Bool
}

func newFakeWorker(t testing.TB, name string) *fakeWorker {
	fw := &fakeWorker{name: name}
	fw.srv = httptest.NewServer(http.HandlerFunc(fw.serve))
	t.Cleanup(fw.srv.Close)
	// Cleanups run last-first: held requests are let go before Close
	// waits for them, so a failing test ends instead of hanging.
	t.Cleanup(func() { fw.setHold(false) })
	return fw
}

func (fw *fakeWorker) setHold(on bool) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if on && fw.hold == nil {
		fw.hold = make(chan struct{})
	}
	if !on && fw.hold != nil {
		close(fw.hold)
		fw.hold = nil
	}
}

// waitInFlight waits until the worker is serving n requests at once.
func (fw *fakeWorker) waitInFlight(t testing.TB, n int32) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%d requests at worker %s", n, fw.name), func() error {
		if got := fw.inFlight.Load(); got != n {
			return fmt.Errorf("%d in flight", got)
		}
		return nil
	})
}

func (fw *fakeWorker) serve(w http.ResponseWriter, r *http.Request) {
	fw.arrived.Add(1)
	n := fw.inFlight.Add(1)
	defer fw.inFlight.Add(-1)
	for {
		p := fw.peak.Load()
		if n <= p || fw.peak.CompareAndSwap(p, n) {
			break
		}
	}
	var body struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	fw.mu.Lock()
	hold := fw.hold
	fw.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			fw.canceled.Add(1)
			return
		}
	}
	fw.served.Add(1)
	if r.URL.Path == api.PathEmbeddings {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.6,0.8]}],"model":%q}`, body.Model)
		return
	}
	if !body.Stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"x","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"hello from %s"},"finish_reason":"stop"}]}`, body.Model, fw.name)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	for i := range 3 {
		fmt.Fprintf(w, "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"tok%d \"}}]}\n\n", i)
		_ = rc.Flush()
		if i == 0 && fw.abort.Load() {
			panic(http.ErrAbortHandler)
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// endpointCollector reports fixed workers and knows their APIs, as the real
// collector does.
type endpointCollector struct {
	workers []wsapi.ProcessStats
	eps     map[string]string
}

func (c endpointCollector) Collect(context.Context) ([]wsapi.ProcessStats, error) {
	return c.workers, nil
}

func (c endpointCollector) Endpoint(group, instance string) string {
	return c.eps[group+"/"+instance]
}

func workersOf(model string, slots int, fws ...*fakeWorker) endpointCollector {
	c := endpointCollector{eps: map[string]string{}}
	for _, fw := range fws {
		c.workers = append(c.workers, wsapi.ProcessStats{Group: "llm", Instance: fw.name, Model: ptr(model), Slots: slots,
			VRAMMB: 4000, TotalVRAMMB: 24000})
		c.eps["llm/"+fw.name] = fw.srv.URL
	}
	return c
}

// routeCluster is a queen-and-hive a (workers wa), a hive b (workers wb) and
// an entry-only node c, all agreed and with every worker known to the queen.
func routeCluster(t testing.TB, ca, cb hive.Collector, opts ...nodetest.Option) (a, b, c *nodetest.Node) {
	t.Helper()
	a = nodetest.Start(t, "a", append([]nodetest.Option{nodetest.WithCollector(ca)}, opts...)...)
	b = nodetest.Start(t, "b", append([]nodetest.Option{nodetest.WithCollector(cb), nodetest.WithRoles(gossip.RoleHive), nodetest.WithJoin(a.GossipAddr())}, opts...)...)
	c = nodetest.Start(t, "c", append([]nodetest.Option{nodetest.WithRoles(), nodetest.WithJoin(a.GossipAddr())}, opts...)...)
	testutil.Eventually(t, 10*time.Second, "cluster ready", func() error {
		if _, err := agreedQueen(a, b, c); err != nil {
			return err
		}
		n, _ := queueTotals(a)
		if n == 0 || len(a.Registry().Hives(time.Now())) < 2 {
			return fmt.Errorf("queen knows %d slots", n)
		}
		return nil
	})
	return a, b, c
}

func mustQueues(n *nodetest.Node) []wsapi.QueueStats {
	return node.QueenQueues(n.Node)
}

// queueTotals sums the queen's slots and leases over its models.
func queueTotals(n *nodetest.Node) (slots, leases int) {
	for _, q := range mustQueues(n) {
		slots, leases = slots+q.Slots, leases+q.Leases
	}
	return slots, leases
}

type apiResult struct {
	status int
	body   string
	header http.Header
}

func post(ctx context.Context, addr, path, body string) (apiResult, error) {
	return send(ctx, http.MethodPost, addr, path, "application/json", []byte(body))
}

func chat(model string, stream bool) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"stream":%v}`, model, stream)
}

func TestRoute_FullPath(t *testing.T) {
	w1, w2 := newFakeWorker(t, "w1"), newFakeWorker(t, "w2")
	a, b, c := routeCluster(t, workersOf("m1-Q4_K_M.gguf", 2, w1), workersOf("m2", 2, w2))
	ctx := context.Background()
	for _, entry := range []*nodetest.Node{a, b, c} {
		t.Run("via "+entry.Name(), func(t *testing.T) {
			addr := entry.HTTPAddr()
			r, err := post(ctx, addr, api.PathChat, chat("m1", false))
			if err != nil || r.status != 200 || !strings.Contains(r.body, "hello from w1") || !strings.Contains(r.body, `"model":"m1"`) {
				t.Fatalf("non-streaming m1: %d %q %v", r.status, r.body, err)
			}
			r, err = post(ctx, addr, api.PathChat, chat("m2", true))
			if err != nil || r.status != 200 || r.header.Get("Content-Type") != "text/event-stream" ||
				!strings.Contains(r.body, "tok2") || !strings.HasSuffix(r.body, "data: [DONE]\n\n") {
				t.Fatalf("streaming m2: %d %q %v", r.status, r.body, err)
			}
			r, err = post(ctx, addr, api.PathEmbeddings, `{"model":"m2","input":"x"}`)
			if err != nil || r.status != 200 || !strings.Contains(r.body, `"embedding":[0.6,0.8]`) {
				t.Fatalf("embeddings: %d %q %v", r.status, r.body, err)
			}
			resp, err := http.Get("http://" + addr + api.PathModels)
			if err != nil {
				t.Fatal(err)
			}
			var models struct {
				Data []struct{ ID string } `json:"data"`
			}
			err = json.NewDecoder(resp.Body).Decode(&models)
			resp.Body.Close()
			if err != nil || len(models.Data) != 2 || models.Data[0].ID != "m1-Q4_K_M.gguf" || models.Data[1].ID != "m2" {
				t.Fatalf("models: %+v %v", models, err)
			}
			for path, want := range map[string]int{"/m2": 200, "/m1-Q4_K_M.gguf": 200, "/nope": 404} {
				resp, err := http.Get("http://" + addr + api.PathModels + path)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("GET %s: %d, want %d", api.PathModels+path, resp.StatusCode, want)
				}
			}
		})
	}
	t.Run("metrics", func(t *testing.T) {
		body, err := httpGet("http://" + a.HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			`rbee_is_queen 1`,
			`rbee_slots{model="m2"} 2`,
			`rbee_queue_depth{model="m2"} 0`,
			`rbee_requests_total{code="200",key="-",model="m1-Q4_K_M.gguf"} 1`,
			`rbee_worker_gpu_utilization_ratio{hive="b",model="m2",simulated="false",worker="llm/w2"} 0`,
			`rbee_responses_broken_total{model="m1-Q4_K_M.gguf"} 0`,
			`rbee_build_info{goversion="go`,
			`rbee_worker_vram_total_bytes{hive="a",model="m1-Q4_K_M.gguf",simulated="false",worker="llm/w1"} 2.5165824e+10`,
			`rbee_time_to_first_byte_seconds_count{model="m1-Q4_K_M.gguf"} 1`,
			`rbee_queue_wait_seconds_count{model="m2"} 2`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("/metrics lacks %s in:\n%s", want, grepLines(string(body), "rbee_requests_total", "rbee_time_to_first"))
			}
		}
	})
	// OpenAI's shape exactly: the kind in type, what clients branch on in
	// code (null for a plain bad request), param present.
	for _, tc := range []struct {
		name, body string
		status     int
		code       any
	}{
		{"unknown model", chat("nope", false), 404, "model_not_found"},
		{"malformed JSON", `{"model":`, 400, nil},
		{"no model", `{"messages":[]}`, 400, nil},
		{"model of the wrong type", `{"model":7}`, 400, nil},
		{"model with a control character", `{"model":"m1\n"}`, 400, nil},
		{"model too long", `{"model":"` + strings.Repeat("m", 600) + `"}`, 400, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := post(ctx, c.HTTPAddr(), api.PathChat, tc.body)
			var e struct {
				Error map[string]any `json:"error"`
			}
			if err != nil || r.status != tc.status || json.Unmarshal([]byte(r.body), &e) != nil {
				t.Fatalf("got %d %q (%v), want %d", r.status, r.body, err, tc.status)
			}
			_, hasParam := e.Error["param"]
			if e.Error["type"] != "invalid_request_error" || e.Error["code"] != tc.code || e.Error["message"] == "" || !hasParam {
				t.Fatalf("error %v, want type invalid_request_error, code %v, a message and a param", e.Error, tc.code)
			}
			// Bad input costs nobody else: the entry node still serves.
			if r, err := post(ctx, c.HTTPAddr(), api.PathChat, chat("m2", false)); err != nil || r.status != 200 {
				t.Fatalf("after bad input: %d %q %v", r.status, r.body, err)
			}
		})
	}
	// A form field, unlike JSON, can carry bytes that are not UTF-8; as a
	// metric label they would panic the node.
	form := "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\xff\r\n--XyZ--\r\n"
	r, err := send(ctx, http.MethodPost, c.HTTPAddr(), "/v1/audio/transcriptions", "multipart/form-data; boundary=XyZ", []byte(form))
	if err != nil || r.status != 400 || !strings.Contains(r.body, "UTF-8") {
		t.Fatalf("model not UTF-8 in a form: %d %q %v, want a 400", r.status, r.body, err)
	}
	if r, err := post(ctx, c.HTTPAddr(), api.PathChat, chat("m2", false)); err != nil || r.status != 200 {
		t.Fatalf("after a form with bad UTF-8: %d %q %v", r.status, r.body, err)
	}
}

// TestRoute_NoOversubscription: 200 concurrent requests against 4 workers of
// 2 slots each; no worker ever serves more than 2 at once, and all succeed.
func TestRoute_NoOversubscription(t *testing.T) {
	ws := []*fakeWorker{newFakeWorker(t, "w1"), newFakeWorker(t, "w2"), newFakeWorker(t, "w3"), newFakeWorker(t, "w4")}
	for _, fw := range ws {
		fw.setHold(true)
	}
	_, _, c := routeCluster(t, workersOf("m", 2, ws[0], ws[1]), workersOf("m", 2, ws[2], ws[3]), nodetest.WithQueue(1024, time.Minute))
	const total = 200
	errs := make(chan error, total)
	var wg sync.WaitGroup
	for i := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := post(context.Background(), c.HTTPAddr(), api.PathChat, chat("m", i%2 == 0))
			if err == nil && r.status != 200 {
				err = fmt.Errorf("status %d: %s", r.status, r.body)
			}
			errs <- err
		}()
	}
	// Release the workers once the first 8 are in and the rest wait.
	testutil.Eventually(t, 10*time.Second, "slots full", func() error {
		n := int32(0)
		for _, fw := range ws {
			n += fw.inFlight.Load()
		}
		if n != 8 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	for _, fw := range ws {
		fw.setHold(false)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	served := int32(0)
	for _, fw := range ws {
		if p := fw.peak.Load(); p > 2 {
			t.Errorf("worker %s served %d at once, has 2 slots", fw.name, p)
		}
		served += fw.served.Load()
	}
	if served != total {
		t.Fatalf("workers served %d, want %d", served, total)
	}
}

// TestRoute_NoOversubscriptionSimulated: the same against `rbee worker
// simulate`'s server, whose own count of concurrent requests (those waiting
// for one of its slots included) is what is asserted.
func TestRoute_NoOversubscriptionSimulated(t *testing.T) {
	cfg := sim.Config{Model: "m", Slots: 2, TokensPerSecond: 400, MaxTokens: 4}
	ca, simsA := simWorkersOf(t, 2, cfg)
	cb, simsB := simWorkersOf(t, 2, cfg)
	sims := append(simsA, simsB...)
	cols := []endpointCollector{ca, cb}
	grantAhead := nodetest.Option(func(cfg *node.Config) { cfg.GrantAhead = 1 })
	a, b, entry := routeCluster(t, cols[0], cols[1], nodetest.WithQueue(1024, time.Minute), grantAhead)
	const total = 200
	errs := make(chan error, total)
	var wg sync.WaitGroup
	for i := range total {
		wg.Go(func() {
			r, err := post(context.Background(), entry.HTTPAddr(), api.PathChat, chat("m", i%2 == 0))
			if err == nil && r.status != 200 {
				err = fmt.Errorf("status %d: %s", r.status, r.body)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantPeaksWithin(t, sims, 2)
	// Stats count a request when its handler returns, just after the
	// client read the last byte.
	testutil.Eventually(t, 5*time.Second, "all served", func() error {
		n := int64(0)
		for _, s := range sims {
			n += s.Stats().Served
		}
		if n != total {
			return fmt.Errorf("served %d of %d", n, total)
		}
		return nil
	})
	// With more requests than slots and 10 ms answers, the queen grants
	// ahead (GrantAhead 1): requests waited at the hives for their
	// worker's slot, and still none ran more than its slots.
	waited := 0.0
	for _, n := range []*nodetest.Node{a, b} {
		waited += metricValue(t, scrape(t, n), "rbee_hive_slot_wait_seconds_count")
	}
	if waited == 0 {
		t.Fatal("no request waited at a hive for a slot: nothing was granted ahead")
	}
	t.Logf("%.0f requests waited at their hive for a slot", waited)
}

// metricValue is the value of the unlabelled sample name in a /metrics
// page, 0 when it is absent.
func metricValue(t testing.TB, page, name string) float64 {
	t.Helper()
	for line := range strings.Lines(page) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// TestRoute_Limits: a full queue answers 429 with Retry-After, a wait past
// the limit 503; a client that gives up frees its slot.
func TestRoute_Limits(t *testing.T) {
	w1 := newFakeWorker(t, "w1")
	w1.setHold(true)
	a, _, c := routeCluster(t, workersOf("m", 1, w1), endpointCollector{}, nodetest.WithQueue(1, 2*time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() {
		_, err := post(ctx, c.HTTPAddr(), api.PathChat, chat("m", true))
		first <- err
	}()
	w1.waitInFlight(t, 1)
	second := make(chan apiResult, 1)
	go func() {
		r, _ := post(context.Background(), c.HTTPAddr(), api.PathChat, chat("m", false))
		second <- r
	}()
	testutil.Eventually(t, 5*time.Second, "second request queued", func() error {
		if qs := mustQueues(a); len(qs) == 0 || qs[0].Waiting != 1 {
			return fmt.Errorf("queues %+v", qs)
		}
		return nil
	})
	r, _ := post(context.Background(), c.HTTPAddr(), api.PathChat, chat("m", false))
	if r.status != 429 || r.header.Get("Retry-After") == "" {
		t.Fatalf("third request: %d %q Retry-After %q, want 429 with Retry-After", r.status, r.body, r.header.Get("Retry-After"))
	}
	if r := <-second; r.status != 503 || !strings.Contains(r.body, "no worker") || !strings.Contains(r.body, "1 all slots leased") {
		t.Fatalf("second request: %d %q, want 503 after the wait limit", r.status, r.body)
	}
	// The client of the first request goes away: the worker sees the
	// cancel, the slot is returned, and the next request is served.
	cancel()
	<-first
	testutil.Eventually(t, 5*time.Second, "worker saw the cancel", func() error {
		if w1.canceled.Load() != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	w1.setHold(false)
	if r, err := post(context.Background(), c.HTTPAddr(), api.PathChat, chat("m", false)); err != nil || r.status != 200 {
		t.Fatalf("after cancel: %d %q %v", r.status, r.body, err)
	}
}

// TestRoute_WorkerDiesMidStream: a worker that breaks off every stream (and
// does not continue one) is the model's only worker: the stream is
// continued on it --migration-limit times, then breaks for the client (an
// error, not a truncated success), and the slot is freed.
func TestRoute_WorkerDiesMidStream(t *testing.T) {
	w1 := newFakeWorker(t, "w1")
	w1.abort.Store(true)
	_, _, c := routeCluster(t, endpointCollector{}, workersOf("m", 1, w1))
	req, _ := http.NewRequest(http.MethodPost, "http://"+c.HTTPAddr()+api.PathChat, strings.NewReader(chat("m", true)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	resp.Body.Close()
	var last string
	for _, l := range lines {
		if strings.HasPrefix(l, "data: ") {
			last = l
		}
	}
	if sc.Err() == nil && !strings.Contains(last, `"error"`) {
		t.Fatalf("stream ended cleanly after %q; want a broken stream or an error event last", lines)
	}
	if n := strings.Count(strings.Join(lines, "\n"), "tok0"); n != 3 {
		t.Errorf("the worker was tried %d times, want 3 (the first answer and 2 continuations)", n)
	}
	if len(lines) == 0 || !strings.Contains(lines[0], "tok0") {
		t.Fatalf("first event %q, want tok0 before the break", lines)
	}
	w1.abort.Store(false)
	if r, err := post(context.Background(), c.HTTPAddr(), api.PathChat, chat("m", false)); err != nil || r.status != 200 {
		t.Fatalf("next request: %d %q %v (slot not freed?)", r.status, r.body, err)
	}
}

func TestRoute_APIKeys(t *testing.T) {
	w1 := newFakeWorker(t, "w1")
	a, _, _ := routeCluster(t, workersOf("m", 1, w1), endpointCollector{}, func(cfg *node.Config) { cfg.APIKeys = []string{"sk-one", "sk-two"} })
	for _, tc := range []struct {
		auth   string
		status int
	}{{"", 401}, {"Bearer sk-nope", 401}, {"Bearer sk-two", 200}} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+a.HTTPAddr()+api.PathChat, bytes.NewReader([]byte(chat("m", false))))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("Authorization %q: %d, want %d", tc.auth, resp.StatusCode, tc.status)
		}
	}
}

func grepLines(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestRoute_OverClusterTLS: with a cluster key every hop between nodes (the
// session, the lease messages, the request to the hive) runs over the
// cluster's mutual TLS on the same port as the plain API.
func TestRoute_OverClusterTLS(t *testing.T) {
	key := mustKey(t)
	w1 := newFakeWorker(t, "w1")
	_, _, c := routeCluster(t, endpointCollector{}, workersOf("m", 1, w1), nodetest.WithKey(key))
	for _, stream := range []bool{false, true} {
		r, err := post(context.Background(), c.HTTPAddr(), api.PathChat, chat("m", stream))
		if err != nil || r.status != 200 || !strings.Contains(r.body, "w1") && !strings.Contains(r.body, "tok2") {
			t.Fatalf("stream=%v through an entry-only node to another hive: %d %q %v", stream, r.status, r.body, err)
		}
	}
	// The CLI with the key reaches the admin API over the same TLS.
	cl := api.NewClient(c.HTTPAddr(), key)
	defer cl.Close()
	// Gossip may still be telling c of b: the member list converges.
	testutil.Eventually(t, 10*time.Second, "members over cluster TLS", func() error {
		ms, err := cl.Members(context.Background())
		if err != nil || len(ms) != 3 {
			return fmt.Errorf("%v, %v", ms, err)
		}
		for _, m := range ms {
			if m.Status != "alive" {
				return fmt.Errorf("%v", ms)
			}
		}
		return nil
	})
	other := api.NewClient(c.HTTPAddr(), mustKey(t))
	defer other.Close()
	if _, err := other.Members(context.Background()); err == nil || !strings.Contains(err.Error(), "cluster key") {
		t.Fatalf("another key's client: err = %v, want a TLS refusal naming the key", err)
	}
}
