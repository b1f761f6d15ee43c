package node_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/wsapi"
)

// usageWorker answers chat completions with a usage object (in a stream
// when asked for it), and remembers the request headers it got.
type usageWorker struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []http.Header
}

// The prompt and the answer of the tests below: neither may reach a log.
const (
	secretPrompt = "the-prompt-is-private"
	secretAnswer = "the-answer-is-private"
)

func newUsageWorker(t testing.TB) *usageWorker {
	uw := &usageWorker{}
	uw.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Stream        bool `json:"stream"`
			StreamOptions struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		uw.mu.Lock()
		uw.got = append(uw.got, r.Header.Clone())
		uw.mu.Unlock()
		if !body.Stream {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`, secretAnswer)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		// A worker that names its own request id: the client must
		// still get the entry node's.
		w.Header().Set("X-Request-Id", "worker-own-id")
		rc := http.NewResponseController(w)
		for i := range 4 {
			fmt.Fprintf(w, "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s%d \"}}]}\n\n", secretAnswer, i)
			_ = rc.Flush()
		}
		if body.StreamOptions.IncludeUsage {
			fmt.Fprint(w, "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4,\"total_tokens\":9}}\n\n")
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(uw.srv.Close)
	return uw
}

func (uw *usageWorker) headers() []http.Header {
	uw.mu.Lock()
	defer uw.mu.Unlock()
	return append([]http.Header(nil), uw.got...)
}

func (uw *usageWorker) collector(model string) endpointCollector {
	return endpointCollector{
		workers: []wsapi.ProcessStats{{Group: "llm", Instance: "w", Model: ptr(model), Slots: 4, VRAMMB: 4000, TotalVRAMMB: 24000}},
		eps:     map[string]string{"llm/w": uw.srv.URL},
	}
}

// syncBuffer is a log sink the test reads while nodes write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// accessLines are the access log's lines, decoded.
func accessLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(s) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// chatRequest posts a chat completion to addr with the given headers and
// returns the response with its body read.
func chatRequest(t *testing.T, addr, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+api.PathChat, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestObserve_AccessLogRequestIDAndMetrics sends requests through an entry
// node to a hive's worker and checks what each leaves behind: the request
// id (the client's kept, else a new one) in the response, at the worker, in
// error bodies and in the access log; one access log line per request that
// matches it, with no prompt, answer or key in it; and the latency figures.
func TestObserve_AccessLogRequestIDAndMetrics(t *testing.T) {
	uw := newUsageWorker(t)
	var access syncBuffer
	const apiKey = "sk-observe-secret"
	_, _, entry := routeCluster(t, endpointCollector{}, uw.collector("m"), func(cfg *node.Config) {
		cfg.APIKeys = []string{apiKey}
		if cfg.Name == "c" {
			cfg.AccessLog = slog.New(slog.NewJSONHandler(&access, nil))
		}
	})
	auth := map[string]string{"Authorization": "Bearer " + apiKey}
	prompt := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":%q}]`, secretPrompt)

	// 1: a stream, with the client's own request id.
	resp, body := chatRequest(t, entry.HTTPAddr(), prompt+`,"stream":true}`, map[string]string{"Authorization": "Bearer " + apiKey, "X-Request-Id": "client-id-1"})
	if resp.StatusCode != 200 || !strings.Contains(body, "[DONE]") {
		t.Fatalf("stream: %d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-Request-Id"); got != "client-id-1" {
		t.Errorf("stream: X-Request-Id %q, want the client's", got)
	}
	// 2: a JSON answer, with none: the entry node makes one.
	resp, body = chatRequest(t, entry.HTTPAddr(), prompt+`}`, auth)
	if resp.StatusCode != 200 {
		t.Fatalf("json: %d %s", resp.StatusCode, body)
	}
	made := resp.Header.Get("X-Request-Id")
	if !regexp.MustCompile(`^req_[0-9a-f]{32}$`).MatchString(made) {
		t.Errorf("json: X-Request-Id %q, want a new req_ id", made)
	}
	// 3: an unknown model: the error body names the request.
	resp, body = chatRequest(t, entry.HTTPAddr(), `{"model":"nope","messages":[]}`, auth)
	refused := resp.Header.Get("X-Request-Id")
	var eb struct {
		Error struct {
			Code      string `json:"code"`
			RequestID string `json:"request_id"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &eb); err != nil || resp.StatusCode != 404 || refused == "" || eb.Error.RequestID != refused {
		t.Errorf("unknown model: %d %s (X-Request-Id %q): want 404 whose error names the request", resp.StatusCode, body, refused)
	}
	// 4: a wrong key, refused before anything else.
	resp, body = chatRequest(t, entry.HTTPAddr(), prompt+`}`, map[string]string{"Authorization": "Bearer sk-wrong"})
	if resp.StatusCode != 401 || !strings.Contains(body, resp.Header.Get("X-Request-Id")) {
		t.Errorf("wrong key: %d %s", resp.StatusCode, body)
	}

	seen := uw.headers()
	if len(seen) != 2 || seen[0].Get("X-Request-Id") != "client-id-1" || seen[1].Get("X-Request-Id") != made {
		t.Errorf("the worker got request ids %v, want client-id-1 then %s", ids(seen), made)
	}

	var lines []map[string]any
	testutil.Eventually(t, 5*time.Second, "four access log lines", func() error {
		if lines = accessLines(t, access.String()); len(lines) != 4 {
			return fmt.Errorf("%d lines", len(lines))
		}
		return nil
	})
	byID := map[string]map[string]any{}
	for _, l := range lines {
		byID[l["request_id"].(string)] = l
	}
	want := map[string]map[string]any{
		"client-id-1": {"msg": "request", "key": "-", "model": "m", "entry": "c", "hive": "b", "worker": "llm/w", "status": 200.0,
			"error": "", "prompt_tokens": 5.0, "completion_tokens": 4.0, "retries": 0.0, "migrations": 0.0, "path": api.PathChat},
		made:    {"model": "m", "hive": "b", "worker": "llm/w", "status": 200.0, "prompt_tokens": 7.0, "completion_tokens": 3.0},
		refused: {"model": "nope", "hive": "", "worker": "", "status": 404.0, "error": "model_not_found", "prompt_tokens": 0.0},
	}
	for id, fields := range want {
		l := byID[id]
		if l == nil {
			t.Errorf("no access log line for %s in %v", id, lines)
			continue
		}
		for k, v := range fields {
			if l[k] != v {
				t.Errorf("request %s: %s = %v (%T), want %v", id, k, l[k], l[k], v)
			}
		}
		for _, k := range []string{"time", "queue_wait_ms", "ttft_ms", "total_ms", "bytes_in", "bytes_out", "client"} {
			if _, ok := l[k]; !ok {
				t.Errorf("request %s: no %s", id, k)
			}
		}
	}
	if l := byID["client-id-1"]; l != nil {
		if l["ttft_ms"].(float64) <= 0 || l["total_ms"].(float64) < l["ttft_ms"].(float64) || l["bytes_in"].(float64) <= 0 {
			t.Errorf("stream timings or sizes: %v", l)
		}
		if !strings.HasPrefix(l["client"].(string), "127.0.0.1:") {
			t.Errorf("client %v", l["client"])
		}
	}
	if l := byID[made]; l != nil && int(l["bytes_out"].(float64)) != len(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`+secretAnswer+`"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`) {
		t.Errorf("bytes_out %v, want the answer's length", l["bytes_out"])
	}
	var unauth map[string]any
	for _, l := range lines {
		if l["status"] == 401.0 {
			unauth = l
		}
	}
	if unauth == nil || unauth["error"] != "invalid_api_key" || unauth["key"] != "-" {
		t.Errorf("the refused key's line: %v", unauth)
	}
	for _, secret := range []string{secretPrompt, secretAnswer, apiKey, "sk-wrong"} {
		if strings.Contains(access.String(), secret) {
			t.Errorf("the access log holds %q", secret)
		}
	}

	m := scrape(t, entry)
	for _, want := range []string{
		`rbee_time_to_first_token_seconds_count{model="m"} 1`,
		`rbee_time_per_output_token_seconds_count{model="m"} 1`,
		`rbee_request_duration_seconds_count{model="m"} 2`,
		`rbee_worker_requests_total{code="2xx",hive="b",worker="llm/w"} 2`,
		`rbee_worker_tokens_per_second_count{hive="b",worker="llm/w"} 2`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("no %s in\n%s", want, grepLines(m, "rbee_time_to|rbee_request_duration|rbee_worker"))
		}
	}
}

func ids(hs []http.Header) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.Get("X-Request-Id")
	}
	return out
}

// TestObserve_AccessLogFileReopen moves the access log away, as logrotate
// does, and reopens it: the next line goes to a new file at the path.
func TestObserve_AccessLogFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/access.log"
	uw := newUsageWorker(t)
	al, err := proxy.OpenAccessLog(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	_, _, entry := routeCluster(t, endpointCollector{}, uw.collector("m"), func(cfg *node.Config) {
		if cfg.Name == "c" {
			cfg.AccessLog = al.Logger
		}
	})
	lineIn := func(path, id string) error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), `"request_id":"`+id+`"`) {
			return fmt.Errorf("%s holds no line of %s: %s", path, id, b)
		}
		return nil
	}
	body := `{"model":"m","messages":[]}`
	if resp, b := chatRequest(t, entry.HTTPAddr(), body, map[string]string{"X-Request-Id": "before"}); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	testutil.Eventually(t, 5*time.Second, "the first line", func() error { return lineIn(path, "before") })
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := al.Reopen(); err != nil {
		t.Fatal(err)
	}
	if resp, b := chatRequest(t, entry.HTTPAddr(), body, map[string]string{"X-Request-Id": "after"}); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	testutil.Eventually(t, 5*time.Second, "the line after the reopen", func() error { return lineIn(path, "after") })
	if err := lineIn(path+".1", "after"); err == nil {
		t.Errorf("the moved file got the line after the reopen")
	}
}

// TestObserve_MigratedStreamLogged: a stream whose worker broke off
// mid-answer and was continued on the other worker is one access log line,
// naming the worker that finished it and the migration.
func TestObserve_MigratedStreamLogged(t *testing.T) {
	broken := new(atomic.Bool)
	c := endpointCollector{eps: map[string]string{}}
	for _, name := range []string{"w1", "w2"} {
		s, err := sim.New(sim.Config{Model: "m", MaxTokens: 30})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(failingOnce{sim: s.Handler(), broken: broken})
		t.Cleanup(srv.Close)
		c.workers = append(c.workers, wsapi.ProcessStats{Group: "llm", Instance: name, Model: ptr("m"), Slots: 2, VRAMMB: 4000, TotalVRAMMB: 24000})
		c.eps["llm/"+name] = srv.URL
	}
	var access syncBuffer
	_, _, entry := routeCluster(t, c, endpointCollector{}, func(cfg *node.Config) {
		if cfg.Name == "c" {
			cfg.AccessLog = slog.New(slog.NewJSONHandler(&access, nil))
		}
	})
	resp, body := chatRequest(t, entry.HTTPAddr(), chat("m", true), map[string]string{"X-Request-Id": "migrated-1"})
	if resp.StatusCode != 200 || !broken.Load() || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream: %d, broke %v: %s", resp.StatusCode, broken.Load(), body)
	}
	var lines []map[string]any
	testutil.Eventually(t, 5*time.Second, "the access log line", func() error {
		if lines = accessLines(t, access.String()); len(lines) != 1 {
			return fmt.Errorf("%d lines", len(lines))
		}
		return nil
	})
	l := lines[0]
	if l["request_id"] != "migrated-1" || l["status"] != 200.0 || l["migrations"] != 1.0 || l["retries"] != 0.0 || l["hive"] != "a" ||
		!strings.HasPrefix(l["worker"].(string), "llm/w") || l["bytes_out"] != float64(len(body)) {
		t.Errorf("access log line %v for a %d-byte answer", l, len(body))
	}
}

// TestObserve_QueuedStreamLogged: a stream that waited for a slot long
// enough to be kept alive with comments (written by the keep-alive's own
// goroutine) logs its wait and every byte its client got.
func TestObserve_QueuedStreamLogged(t *testing.T) {
	fw := newFakeWorker(t, "w1")
	var access syncBuffer
	_, _, entry := routeCluster(t, endpointCollector{}, workersOf("m", 1, fw), func(cfg *node.Config) {
		if cfg.Name == "c" {
			cfg.AccessLog = slog.New(slog.NewJSONHandler(&access, nil))
		}
	})
	fw.setHold(true)
	first := make(chan error, 1)
	go func() {
		resp, err := http.Post("http://"+entry.HTTPAddr()+api.PathChat, "application/json", strings.NewReader(chat("m", false)))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		first <- err
	}()
	fw.waitInFlight(t, 1)
	// The queued stream: its first bytes are the keep-alive's comments,
	// written while it waits (after 1 s); the hold ends once they came.
	req, err := http.NewRequest(http.MethodPost, "http://"+entry.HTTPAddr()+api.PathChat, strings.NewReader(chat("m", true)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "queued-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for !strings.Contains(got.String(), "\n\n") {
		n, err := resp.Body.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("before the first comment: %v (%q)", err, got.String())
		}
	}
	fw.setHold(false)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	body := got.String() + string(rest)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(body, ": rbee") || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("queued stream: %d %q", resp.StatusCode, body)
	}
	var l map[string]any
	testutil.Eventually(t, 5*time.Second, "the queued stream's line", func() error {
		for _, line := range accessLines(t, access.String()) {
			if line["request_id"] == "queued-1" {
				l = line
				return nil
			}
		}
		return fmt.Errorf("none yet")
	})
	// It waited until its first keep-alive comment (1 s after the handler
	// began) had come; its wait is timed from the lease request, which
	// begins a little later under load: at least half of that second.
	if l["status"] != 200.0 || l["queue_wait_ms"].(float64) < 500 || l["ttft_ms"].(float64) < l["queue_wait_ms"].(float64) ||
		l["bytes_out"] != float64(len(body)) || l["worker"] != "llm/w1" {
		t.Errorf("access log line %v for a %d-byte answer", l, len(body))
	}
}
