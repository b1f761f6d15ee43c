package main

// End-to-end tests of the model lifecycle: hives that start inference
// workers on demand (--model, --engine, --sim-gpus, --idle-unload), with
// real `rbee node run` processes and the built-in sim engine, so that no GPU
// is needed. What a hive did is read from its log ("starting worker" with
// the engine's pid and instance), what the cluster says from /v1/models, and
// whether an engine still runs from /proc.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/hive/telemetry"
	"github.com/rbee/rbee/wsapi"
)

// lcClient is an OpenAI client of the cluster, as on another machine (with
// the cluster token). No keep-alive: each request is its own connection, so
// nothing is left idle for goleak when the test ends.
type lcClient struct {
	key wsapi.Key
	hc  *http.Client
}

func newLCClient(c *cluster) *lcClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	return &lcClient{key: c.key, hc: &http.Client{Transport: tr}}
}

// lcReply is what one chat completion got.
type lcReply struct {
	status int
	body   string
	took   time.Duration
	err    error // transport error; status is 0 then
}

// message is the OpenAI error message of an error reply, or the body.
func (r lcReply) message() string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(r.body), &e) == nil && e.Error.Message != "" {
		return e.Error.Message
	}
	return r.body
}

func (r lcReply) String() string {
	if r.err != nil {
		return fmt.Sprintf("error after %v: %v", r.took.Round(time.Millisecond), r.err)
	}
	return fmt.Sprintf("%d after %v: %s", r.status, r.took.Round(time.Millisecond), strings.TrimSpace(r.body))
}

// text is the answer's content of a 200 non-streaming reply.
func (r lcReply) text() string {
	var cc struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if json.Unmarshal([]byte(r.body), &cc) != nil || len(cc.Choices) == 0 {
		return ""
	}
	return cc.Choices[0].Message.Content
}

func (lc *lcClient) post(ctx context.Context, addr, model string, maxTokens int, stream bool) (*http.Response, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"stream":%v,"max_tokens":%d}`, model, stream, maxTokens)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+lc.key.HTTPToken())
	req.Header.Set("Content-Type", "application/json")
	return lc.hc.Do(req)
}

// chat sends one non-streaming chat completion and reads the whole answer,
// giving up after within.
func (lc *lcClient) chat(addr, model string, maxTokens int, within time.Duration) lcReply {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	start := time.Now()
	resp, err := lc.post(ctx, addr, model, maxTokens, false)
	if err != nil {
		return lcReply{took: time.Since(start), err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return lcReply{status: resp.StatusCode, body: string(b), took: time.Since(start), err: err}
}

// stream sends one streaming chat completion; first is closed when the
// first event arrives (the request holds its lease then), and the reply
// holds the whole stream.
func (lc *lcClient) stream(addr, model string, maxTokens int, within time.Duration, first chan<- struct{}) lcReply {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	start := time.Now()
	resp, err := lc.post(ctx, addr, model, maxTokens, true)
	if err != nil {
		return lcReply{took: time.Since(start), err: err}
	}
	defer resp.Body.Close()
	var b strings.Builder
	br := bufio.NewReader(resp.Body)
	signalled := false
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if !signalled && strings.HasPrefix(line, "data: ") && resp.StatusCode == http.StatusOK {
			close(first)
			signalled = true
		}
		if errors.Is(err, io.EOF) {
			return lcReply{status: resp.StatusCode, body: b.String(), took: time.Since(start)}
		}
		if err != nil {
			return lcReply{status: resp.StatusCode, body: b.String(), took: time.Since(start), err: err}
		}
	}
}

// lcModel is one entry of GET /v1/models.
type lcModel struct {
	ID     string   `json:"id"`
	State  string   `json:"state"`
	Reason string   `json:"reason"`
	Hives  []string `json:"hives"`
	Slots  int      `json:"slots"`
}

// models is p's GET /v1/models, by id.
func lcModels(c *cluster, p *proc) (map[string]lcModel, error) {
	var list struct {
		Data []lcModel `json:"data"`
	}
	if err := c.getJSON(p.httpAddr, "/v1/models", &list); err != nil {
		return nil, err
	}
	out := map[string]lcModel{}
	for _, m := range list.Data {
		out[m.ID] = m
	}
	return out, nil
}

// waitModelState waits until p's /v1/models lists model in state (and, when
// hives is not empty, offered by exactly those hives), and returns it.
func waitModelState(t *testing.T, c *cluster, p *proc, model, state string, hives ...string) lcModel {
	t.Helper()
	var got lcModel
	testutil.Every(20*time.Millisecond).Eventually(t, 20*time.Second, fmt.Sprintf("%s lists %s %s", p.name, model, state), func() error {
		ms, err := lcModels(c, p)
		if err != nil {
			return err
		}
		m, ok := ms[model]
		if !ok {
			return fmt.Errorf("not listed: %+v", ms)
		}
		if m.State != state {
			return fmt.Errorf("%+v", m)
		}
		if len(hives) > 0 && !slices.Equal(m.Hives, hives) {
			return fmt.Errorf("hives %v, want %v", m.Hives, hives)
		}
		got = m
		return nil
	})
	return got
}

// logAttr matches one key=value of slog's text format.
var logAttr = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S*)`)

// logRecords returns the lines of a node's log with message msg, as
// attribute maps (quoted values unquoted); only those whose attributes
// include every key=value of match.
func logRecords(log, msg string, match ...string) []map[string]string {
	var out []map[string]string
	for line := range strings.Lines(log) {
		if !strings.Contains(line, "msg="+strconv.Quote(msg)+" ") && !strings.HasSuffix(strings.TrimSpace(line), "msg="+strconv.Quote(msg)) {
			continue
		}
		attrs := map[string]string{}
		for _, m := range logAttr.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			attrs[m[1]] = v
		}
		ok := true
		for i := 0; i+1 < len(match); i += 2 {
			if attrs[match[i]] != match[i+1] {
				ok = false
			}
		}
		if ok {
			out = append(out, attrs)
		}
	}
	return out
}

// workerStart is a hive's "starting worker" line.
type workerStart struct {
	model, instance string
	pid             int
	inCgroup        bool
}

// workerStarts lists the engines p's hive started for model, in order.
func workerStarts(p *proc, model string) []workerStart {
	var out []workerStart
	for _, a := range logRecords(p.log(), "starting worker", "model", model) {
		pid, _ := strconv.Atoi(a["pid"])
		out = append(out, workerStart{model: a["model"], instance: a["instance"], pid: pid, inCgroup: a["in_cgroup"] == "true"})
	}
	return out
}

// waitWorkerStart waits until p's hive has started an engine for model and
// returns the first start.
func waitWorkerStart(t *testing.T, p *proc, model string, within time.Duration) workerStart {
	t.Helper()
	var ws workerStart
	testutil.Every(5*time.Millisecond).Eventually(t, within, p.name+` logs "starting worker" for `+model, func() error {
		if p.Exited() {
			return testutil.Stop(fmt.Errorf("%s exited: %v", p.name, p.Err()))
		}
		s := workerStarts(p, model)
		if len(s) == 0 {
			return errors.New("not yet")
		}
		ws = s[0]
		return nil
	})
	return ws
}

// processGone says why pid still runs, nil once it has exited (a zombie
// nobody reaped yet counts as exited: it runs nothing and holds no memory).
func processGone(pid int) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return fmt.Errorf("pid %d: unreadable stat %q", pid, s)
	}
	if st := s[i+2]; st == 'Z' || st == 'X' {
		return nil
	}
	return fmt.Errorf("pid %d still runs: %s", pid, strings.TrimSpace(s[:min(len(s), 80)]))
}

func waitProcessGone(t *testing.T, pid int, within time.Duration, what string) {
	t.Helper()
	testutil.Every(20*time.Millisecond).Eventually(t, within, what, func() error { return processGone(pid) })
}

// newLCCluster is newCluster for nodes that start engines. When the test
// ends it also removes the engines' cgroups: the harness SIGKILLs the
// nodes, and a hive killed outright leaves its engines' (empty) leaf
// cgroups behind.
func newLCCluster(t *testing.T) *cluster {
	c := newCluster(t)
	t.Cleanup(func() {
		c.close() // kill the nodes first; their engines die with them
		root, err := telemetry.FindCgroupRoot()
		if err != nil {
			return
		}
		c.mu.Lock()
		procs := slices.Clone(c.procs)
		c.mu.Unlock()
		for _, p := range procs {
			for _, a := range logRecords(p.log(), "starting worker", "in_cgroup", "true") {
				pid, _ := strconv.Atoi(a["pid"])
				dir := filepath.Join(root, "rbee.slice", wsapi.ManagedGroup, a["instance"])
				err := testutil.Every(20*time.Millisecond).Until(5*time.Second, func() error {
					if err := processGone(pid); err != nil {
						return err
					}
					if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
						return err
					}
					return nil
				})
				if err != nil {
					t.Logf("left cgroup %s behind: %v", dir, err)
				}
			}
		}
	})
	return c
}

// lcNode is the flags of a node that starts workers on demand: its own
// data dir, so that the engines' logs stay with the test.
func lcNode(c *cluster, name, join string, extra ...string) nodeSpec {
	return nodeSpec{name: name, join: join, extra: append([]string{"--data-dir", filepath.Join(c.dir, name+"-data")}, extra...)}
}

// simModel is a --model value for the sim engine.
func simModel(name string, opts string) string {
	return name + "=,engine=sim," + opts
}

// TestModels_ColdStart: a model no worker serves is listed as available; a
// request for it waits while the hive starts a worker, and gets its answer;
// then the model is listed as loaded.
func TestModels_ColdStart(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	n := c.start(lcNode(c, "n", "", "--model", simModel("tiny", "load_ms=1500,vram=3000,args=--tokens-per-second 0")))[0]
	lc := newLCClient(c)

	m := waitModelState(t, c, n, "tiny", "available", "n")
	t.Logf("before any request: %+v", m)

	r := lc.chat(n.httpAddr, "tiny", 4, 30*time.Second)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("cold request: %v", r)
	}
	if r.text() == "" {
		t.Fatalf("cold request: 200 without text: %s", r.body)
	}
	if r.took < 1500*time.Millisecond {
		t.Errorf("cold request answered after %v, before the model could load (load_ms=1500)", r.took)
	}
	t.Logf("cold request answered after %v: %q", r.took.Round(time.Millisecond), r.text())
	if s := workerStarts(n, "tiny"); len(s) != 1 {
		t.Errorf("hive started %d workers for tiny, want 1: %+v", len(s), s)
	}
	m = waitModelState(t, c, n, "tiny", "loaded")
	t.Logf("after: %+v", m)
}

// TestModels_ConcurrentColdRequestsStartOne: requests that arrive together
// for a cold model share one start.
func TestModels_ConcurrentColdRequestsStartOne(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	n := c.start(lcNode(c, "n", "", "--model", simModel("tiny", "load_ms=1500,vram=3000,args=--tokens-per-second 0")))[0]
	lc := newLCClient(c)
	waitModelState(t, c, n, "tiny", "available")

	const clients = 5
	replies := make([]lcReply, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { replies[i] = lc.chat(n.httpAddr, "tiny", 4, 30*time.Second) })
	}
	wg.Wait()
	for i, r := range replies {
		if r.err != nil || r.status != http.StatusOK || r.text() == "" {
			t.Errorf("request %d: %v", i, r)
		} else {
			t.Logf("request %d: 200 after %v", i, r.took.Round(time.Millisecond))
		}
	}
	if s := workerStarts(n, "tiny"); len(s) != 1 {
		t.Errorf(`hive logged "starting worker" %d times for %d concurrent cold requests, want 1: %+v`, len(s), clients, s)
	}
	if q := logRecords(n.log(), "starting a worker", "model", "tiny"); len(q) != 1 {
		t.Errorf(`queen logged "starting a worker" %d times, want 1: %v`, len(q), q)
	}
}

// TestModels_IdleUnload: a worker rbee started that serves nothing for
// --idle-unload is stopped: its process ends, and its cgroup (where the hive
// could make one) is removed.
func TestModels_IdleUnload(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	n := c.start(lcNode(c, "n", "", "--idle-unload", "2s",
		"--model", simModel("tiny", "load_ms=200,vram=3000,args=--tokens-per-second 0")))[0]
	lc := newLCClient(c)
	waitModelState(t, c, n, "tiny", "available")

	r := lc.chat(n.httpAddr, "tiny", 4, 30*time.Second)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request: %v", r)
	}
	servedAt := time.Now()
	ws := waitWorkerStart(t, n, "tiny", time.Second)
	if ws.pid <= 0 {
		t.Fatalf(`"starting worker" line without a pid: %+v`, ws)
	}
	if err := processGone(ws.pid); err == nil {
		t.Fatalf("engine pid %d is gone right after it served", ws.pid)
	}

	// The cgroup part: only where the hive could make the cgroup.
	cgDir := ""
	root, rootErr := telemetry.FindCgroupRoot()
	switch {
	case ws.inCgroup && rootErr != nil:
		t.Fatalf("hive says the worker is in a cgroup, but this test finds no cgroup v2 root: %v", rootErr)
	case ws.inCgroup:
		cgDir = filepath.Join(root, "rbee.slice", wsapi.ManagedGroup, ws.instance)
		if _, err := os.Stat(cgDir); err != nil {
			t.Fatalf("hive says the worker is in a cgroup, but %s: %v", cgDir, err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", ws.pid))
		want := "0::/rbee.slice/" + wsapi.ManagedGroup + "/" + ws.instance
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("/proc/%d/cgroup: %q (%v), want a line %q", ws.pid, b, err, want)
		}
	case rootErr != nil:
		t.Logf("cgroup part skipped: no cgroup v2 mount here (%v), so the worker runs outside any cgroup", rootErr)
	default:
		t.Logf("cgroup part skipped: the hive started the worker outside any cgroup (in_cgroup=false): %s/rbee.slice is not writable here", root)
	}

	waitProcessGone(t, ws.pid, 15*time.Second, fmt.Sprintf("engine pid %d stopped after --idle-unload 2s", ws.pid))
	t.Logf("engine pid %d gone %v after its last request", ws.pid, time.Since(servedAt).Round(100*time.Millisecond))
	if stops := logRecords(n.log(), "stopping worker", "model", "tiny", "instance", ws.instance); len(stops) != 1 ||
		!strings.HasPrefix(stops[0]["why"], "idle for") {
		t.Errorf(`want one "stopping worker" line for instance %s saying "idle for ...": %v`, ws.instance, stops)
	}
	if cgDir != "" {
		testutil.Every(20*time.Millisecond).Eventually(t, 5*time.Second, "cgroup "+cgDir+" removed", func() error {
			if _, err := os.Stat(cgDir); !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("stat: %v", err)
			}
			return nil
		})
		t.Logf("cgroup %s held the engine while it ran, and is removed", cgDir)
	}
	waitModelState(t, c, n, "tiny", "available")
}

// TestModels_EvictsIdleNeverBusy: on a full GPU a start stops the least
// recently used idle worker, never one serving a request: then the request
// waits and gets 503 at --queue-timeout while the busy worker finishes.
func TestModels_EvictsIdleNeverBusy(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	// One 8 GiB GPU takes one 5000 MiB model at a time; 5 tokens a second
	// keep a 40-token request busy for 8 s.
	opts := "load_ms=300,vram=5000,args=--tokens-per-second 5"
	n := c.start(lcNode(c, "n", "", "--sim-gpus", "1x8GiB", "--queue-timeout", "4s",
		"--model", simModel("a", opts), "--model", simModel("b", opts), "--model", simModel("c", opts)))[0]
	lc := newLCClient(c)
	for _, m := range []string{"a", "b", "c"} {
		waitModelState(t, c, n, m, "available")
	}

	if r := lc.chat(n.httpAddr, "a", 1, 20*time.Second); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request for a: %v", r)
	}
	wa := waitWorkerStart(t, n, "a", time.Second)

	// b does not fit beside a: a, idle, is evicted.
	if r := lc.chat(n.httpAddr, "b", 1, 20*time.Second); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request for b (a idle, to be evicted): %v", r)
	}
	wb := waitWorkerStart(t, n, "b", time.Second)
	waitProcessGone(t, wa.pid, 10*time.Second, fmt.Sprintf("a's engine (pid %d) evicted", wa.pid))
	if stops := logRecords(n.log(), "stopping worker", "model", "a"); len(stops) != 1 || stops[0]["why"] != "evicted to make room for b" {
		t.Errorf(`want one "stopping worker" for a, evicted to make room for b: %v`, stops)
	}

	// b busy with a long request; c must not evict it.
	first := make(chan struct{})
	long := make(chan lcReply, 1)
	go func() { long <- lc.stream(n.httpAddr, "b", 40, 60*time.Second, first) }()
	select {
	case <-first:
	case r := <-long:
		t.Fatalf("long request for b ended before its first event: %v", r)
	case <-time.After(20 * time.Second):
		t.Fatal("long request for b: no first event within 20 s")
	}
	rc := lc.chat(n.httpAddr, "c", 1, 20*time.Second)
	if rc.err != nil || rc.status != http.StatusServiceUnavailable {
		t.Errorf("request for c while b is busy: %v; want 503 (only busy b could make room)", rc)
	} else {
		t.Logf("request for c while b is busy: %v", rc)
	}
	if err := processGone(wb.pid); err == nil {
		t.Errorf("b's engine (pid %d) is gone while it served a request", wb.pid)
	}
	select {
	case <-long:
		t.Errorf("b's long request ended before c's 503: the test did not keep b busy long enough")
	default:
	}
	var rb lcReply
	select {
	case rb = <-long:
	case <-time.After(30 * time.Second):
		t.Fatal("b's long request did not end within 30 s")
	}
	if rb.err != nil || rb.status != http.StatusOK || !strings.Contains(rb.body, "data: [DONE]") {
		t.Errorf("b's long request: %v", rb)
	} else {
		t.Logf("b's long request completed after %v", rb.took.Round(time.Millisecond))
	}
	if s := workerStarts(n, "c"); len(s) != 0 {
		t.Errorf("hive started c: %+v", s)
	}
	if stops := logRecords(n.log(), "stopping worker", "model", "b"); len(stops) != 0 {
		t.Errorf("hive stopped b: %v", stops)
	}
}

// TestModels_EngineExitsAtOnce: an engine that exits before it is ready
// fails the requests waiting for it with its last output line, at once, and
// the cluster tries it again only a few times a minute, not in a storm.
func TestModels_EngineExitsAtOnce(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	// Not *.gguf: a GGUF that is not one is refused by its header before any
	// engine runs (TestModels_BadCatalogEntries); this one must reach the engine.
	weights := filepath.Join(c.dir, "bad.bin")
	if err := os.WriteFile(weights, []byte("not gguf"), 0o644); err != nil {
		t.Fatal(err)
	}
	// /bin/sh is the engine's program itself: rbee runs no shell. ';' in a
	// template has a test of its own (TestModels_EngineTemplateWithSemicolon).
	n := c.start(lcNode(c, "n", "", "--queue-timeout", "20s",
		"--engine", `broken=/bin/sh -c "echo cannot load model weights: bad magic && exit 3" sh {port}`,
		"--model", "bad="+weights+",engine=broken"))[0]
	lc := newLCClient(c)
	waitModelState(t, c, n, "bad", "available")

	const (
		want   = "cannot load model weights"
		period = 30 * time.Second
		quick  = 5 * time.Second // a 503 later than this waited for a timeout
	)
	r0 := lc.chat(n.httpAddr, "bad", 4, 25*time.Second)
	if r0.status != http.StatusServiceUnavailable || !strings.Contains(r0.message(), want) {
		t.Fatalf("first request: %v; want 503 saying %q", r0, want)
	}
	t.Logf("first request: %v", r0)

	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(period)
	sent, slowest, withLine := 0, time.Duration(0), 0
	for time.Now().Before(end) {
		<-tick.C
		r := lc.chat(n.httpAddr, "bad", 4, 25*time.Second)
		sent++
		slowest = max(slowest, r.took)
		switch {
		case r.err != nil || r.status != http.StatusServiceUnavailable:
			t.Errorf("request %d: %v; want 503", sent, r)
		case r.took > quick:
			t.Errorf("request %d: 503 after %v, want within %v: %v", sent, r.took.Round(time.Millisecond), quick, r)
		case !strings.Contains(r.message(), want):
			t.Errorf("request %d: 503 without the engine's line %q: %s", sent, want, r.message())
		default:
			withLine++
		}
	}
	starts := workerStarts(n, "bad")
	t.Logf("%d requests over %v: %d got 503 with the engine's line, slowest %v; %d starts", sent, period, withLine,
		slowest.Round(time.Millisecond), len(starts))
	if len(starts) > 4 {
		t.Errorf("hive started the broken engine %d times in about %v, want at most 4", len(starts), period+r0.took)
	}
	if len(starts) < 2 {
		t.Errorf("hive started the broken engine %d times in about %v: it never retried after the 10 s back-off", len(starts), period+r0.took)
	}
	fails := logRecords(n.log(), "worker failed to start", "model", "bad")
	if len(fails) != len(starts) {
		t.Errorf(`%d "worker failed to start" lines for %d starts: %v`, len(fails), len(starts), fails)
	}
	for _, f := range fails {
		if !strings.Contains(f["reason"], want) || !strings.Contains(f["reason"], "status 3") {
			t.Errorf(`"worker failed to start" without the exit status and the engine's line: %v`, f)
		}
	}
}

// TestModels_EngineTemplateWithSemicolon: an --engine template given as a
// flag may hold ';' inside quotes (a shell command line as an argument): the
// flag is one engine, and sh gets the whole line as one word.
func TestModels_EngineTemplateWithSemicolon(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	weights := filepath.Join(c.dir, "bad.bin")
	if err := os.WriteFile(weights, []byte("not gguf"), 0o644); err != nil {
		t.Fatal(err)
	}
	engine := `broken=/bin/sh -c "echo cannot load model weights: bad magic; exit 3" sh {port}`
	p, err := c.startOne(lcNode(c, "n", "", "--engine", engine, "--model", "bad="+weights+",engine=broken"))
	if err != nil {
		t.Fatalf("node with --engine %q did not start (was the flag's value split at ';'?): %v", engine, err)
	}
	waitModelState(t, c, p, "bad", "available")
	// sh got the whole command line as one argument: it ran both commands.
	r := newLCClient(c).chat(p.httpAddr, "bad", 4, 25*time.Second)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.message(), "exited with status 3 before it was ready: cannot load model weights: bad magic") {
		t.Errorf("request: %v; want 503 saying the engine exited with status 3 after printing its line", r)
	}
}

// TestModels_QueenKilledWhileLoading: the queen dies while a worker loads
// for waiting requests; the new queen picks the load up from the hive's
// reports, and the requests are answered.
func TestModels_QueenKilledWhileLoading(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	q := c.start(lcNode(c, "q", "", "--roles", "queen", "--queen-priority", "10"))[0]
	ps := c.start(
		lcNode(c, "h", q.gossipAddr, "--roles", "queen,hive", "--queen-priority", "1",
			"--model", simModel("tiny", "load_ms=4000,vram=3000,args=--tokens-per-second 0")),
		lcNode(c, "e", q.gossipAddr, "--roles", "none"),
	)
	h, e := ps[0], ps[1]
	all := []*proc{q, h, e}
	if queen := c.waitConverged(all, 20*time.Second); queen != "q" {
		t.Fatalf("queen is %s, want q", queen)
	}
	waitModelState(t, c, e, "tiny", "available", "h")
	lc := newLCClient(c)

	const clients = 3
	replies := make([]lcReply, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { replies[i] = lc.chat(e.httpAddr, "tiny", 4, 60*time.Second) })
	}
	ws := waitWorkerStart(t, h, "tiny", 15*time.Second)
	c.kill(q)
	killedAt := time.Now()
	t.Logf("queen q killed while h loads tiny (engine pid %d)", ws.pid)
	wg.Wait()
	for i, r := range replies {
		if r.err != nil || r.status != http.StatusOK || r.text() == "" {
			t.Errorf("request %d: %v", i, r)
		} else {
			t.Logf("request %d: 200 after %v (%v after the kill)", i, r.took.Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))
		}
	}
	if queen := c.waitAgree(all, 15*time.Second); queen != "h" {
		t.Errorf("new queen %s, want h", queen)
	}
	if s := workerStarts(h, "tiny"); len(s) != 1 {
		t.Errorf("h started %d workers for tiny, want 1 (the new queen should adopt the load under way): %+v", len(s), s)
	}
}

// TestModels_HiveKilledWhileLoading: the hive loading a model dies; the
// request waiting for it is served by a worker another hive starts, and the
// engine the dead hive started dies with it.
func TestModels_HiveKilledWhileLoading(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	model := simModel("tiny", "load_ms=4000,vram=3000,args=--tokens-per-second 0")
	q := c.start(lcNode(c, "q", "", "--roles", "queen"))[0]
	// h1 has the most free VRAM, so it is chosen first.
	ps := c.start(
		lcNode(c, "h1", q.gossipAddr, "--roles", "hive", "--sim-gpus", "1x80GiB", "--model", model),
		lcNode(c, "h2", q.gossipAddr, "--roles", "hive", "--sim-gpus", "1x8GiB", "--model", model),
	)
	h1, h2 := ps[0], ps[1]
	if queen := c.waitConverged([]*proc{q, h1, h2}, 20*time.Second); queen != "q" {
		t.Fatalf("queen is %s, want q", queen)
	}
	waitModelState(t, c, q, "tiny", "available", "h1", "h2")
	lc := newLCClient(c)

	reply := make(chan lcReply, 1)
	go func() { reply <- lc.chat(q.httpAddr, "tiny", 4, 60*time.Second) }()
	ws := waitWorkerStart(t, h1, "tiny", 15*time.Second)
	if s := workerStarts(h2, "tiny"); len(s) != 0 {
		t.Fatalf("h2 started tiny too: %+v", s)
	}
	c.kill(h1)
	killedAt := time.Now()
	t.Logf("h1 killed while it loads tiny (engine pid %d)", ws.pid)

	var r lcReply
	select {
	case r = <-reply:
	case <-time.After(70 * time.Second):
		t.Fatal("request not answered within 70 s")
	}
	if r.err != nil || r.status != http.StatusOK || r.text() == "" {
		t.Errorf("request: %v", r)
	} else {
		t.Logf("request: 200 after %v (%v after the kill)", r.took.Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))
	}
	if ready := logRecords(h2.log(), "worker ready", "model", "tiny"); len(ready) != 1 {
		t.Errorf(`h2 logged "worker ready" %d times for tiny, want 1`, len(ready))
	}
	waitProcessGone(t, ws.pid, 5*time.Second, fmt.Sprintf("engine h1 started (pid %d) gone with h1", ws.pid))
}

// TestModels_BadCatalogEntries: entries that cannot start (a missing file,
// an unknown engine) do not stop the hive: they are logged and listed with
// why, and a request for one gets a 503 that says why. An engine template
// with an unknown placeholder is refused at startup.
func TestModels_BadCatalogEntries(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	weights := filepath.Join(c.dir, "weird.gguf")
	if err := os.WriteFile(weights, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := c.start(lcNode(c, "n", "",
		"--model", "gone=/nonexistent/x.gguf",
		"--model", "weird="+weights+",engine=nosuch",
		"--model", simModel("good", "load_ms=100,vram=1000,args=--tokens-per-second 0")))[0]

	wantWhy := map[string]string{
		"gone":  "model path /nonexistent/x.gguf does not exist",
		"weird": `unknown engine "nosuch"`,
	}
	for model, why := range wantWhy {
		ws := logRecords(n.log(), "model cannot start on this hive", "model", model)
		if len(ws) != 1 || !strings.Contains(ws[0]["reason"], why) || ws[0]["level"] != "WARN" {
			t.Errorf("want one WARN line for %s with reason %q: %v", model, why, ws)
		}
	}

	waitModelState(t, c, n, "good", "available")
	for model, why := range wantWhy {
		m := waitModelState(t, c, n, model, "unavailable")
		if !strings.Contains(m.Reason, why) {
			t.Errorf("/v1/models: %s: reason %q, want it to say %q", model, m.Reason, why)
		}
	}

	lc := newLCClient(c)
	r := lc.chat(n.httpAddr, "gone", 4, 10*time.Second)
	if r.err != nil || r.status != http.StatusServiceUnavailable || !strings.Contains(r.message(), wantWhy["gone"]) {
		t.Errorf("request for gone: %v; want 503 saying %q", r, wantWhy["gone"])
	} else if r.took > 2*time.Second {
		t.Errorf("request for gone: 503 after %v; want it at once", r.took)
	}
	if r := lc.chat(n.httpAddr, "good", 4, 30*time.Second); r.err != nil || r.status != http.StatusOK {
		t.Errorf("request for good: %v", r)
	}

	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runRbee("node", "run", "--name", "x", "--cluster-key-file", c.keyFile,
		"--gossip-addr", "127.0.0.1:"+strconv.Itoa(ports[0]), "--http-addr", "127.0.0.1:"+strconv.Itoa(ports[1]),
		"--engine", "x=serve {model}")
	var ee *exec.ExitError
	if err == nil || !errors.As(err, &ee) {
		t.Errorf("rbee node run --engine 'x=serve {model}': %v, want a non-zero exit\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	} else if !strings.Contains(errOut, "{model}") || !strings.Contains(errOut, "placeholder") {
		t.Errorf("rbee node run --engine 'x=serve {model}' exited (%v) without naming the unknown placeholder:\n%s", err, errOut)
	} else {
		t.Logf("rbee node run --engine 'x=serve {model}': %v: %s", err, lastLine(errOut))
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestModels_NeverFits: a model bigger than any GPU of the cluster could
// ever hold is unavailable in /v1/models with why, and a request for it
// gets a 503 at once instead of waiting out the queue timeout.
func TestModels_NeverFits(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	n := c.start(lcNode(c, "n", "", "--sim-gpus", "1x8GiB", "--queue-timeout", "20s",
		"--model", simModel("huge", "load_ms=100,vram=20000,args=--tokens-per-second 0"),
		"--model", simModel("small", "load_ms=100,vram=1000,args=--tokens-per-second 0")))[0]
	const why = "needs 20000 MiB, the largest placement offers 8192 MiB"
	waitModelState(t, c, n, "small", "available")
	m := waitModelState(t, c, n, "huge", "unavailable")
	if !strings.Contains(m.Reason, why) {
		t.Errorf("/v1/models: huge: reason %q, want it to say %q", m.Reason, why)
	}
	lc := newLCClient(c)
	r := lc.chat(n.httpAddr, "huge", 4, 30*time.Second)
	if r.err != nil || r.status != http.StatusServiceUnavailable || !strings.Contains(r.message(), why) {
		t.Errorf("request for huge: %v; want 503 saying %q", r, why)
	} else if r.took > 2*time.Second {
		t.Errorf("request for huge: 503 after %v; want it at once", r.took)
	}
	if !strings.Contains(r.body, "model_unavailable") {
		t.Errorf("request for huge: body %s, want type model_unavailable", r.body)
	}
}

// TestModels_SplitAcrossGPUs: a model no one simulated GPU holds but two
// together do is started across both, and CUDA_VISIBLE_DEVICES lists them.
func TestModels_SplitAcrossGPUs(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	n := c.start(lcNode(c, "n", "", "--sim-gpus", "2x24GiB",
		"--model", simModel("big", "load_ms=100,vram=40000,args=--tokens-per-second 0")))[0]
	waitModelState(t, c, n, "big", "available")
	lc := newLCClient(c)
	if r := lc.chat(n.httpAddr, "big", 4, 30*time.Second); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request for big: %v", r)
	}
	starts := logRecords(n.log(), "starting worker", "model", "big")
	if len(starts) != 1 || starts[0]["gpus"] != "[0 1]" {
		t.Fatalf("starting worker lines %v, want one on gpus [0 1]", starts)
	}
	pid, _ := strconv.Atoi(starts[0]["pid"])
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatalf("engine's environment: %v", err)
	}
	if !slices.Contains(strings.Split(string(env), "\x00"), "CUDA_VISIBLE_DEVICES=0,1") {
		t.Errorf("engine's environment lacks CUDA_VISIBLE_DEVICES=0,1: %q", env)
	}
}
