package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testSim is a simulator behind a real HTTP server on 127.0.0.1.
type testSim struct {
	*Simulator
	srv *httptest.Server
	hc  *http.Client
}

func startSim(t *testing.T, cfg Config) *testSim {
	t.Helper()
	if cfg.Model == "" {
		cfg.Model = "sim-model"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("new simulator: %v", err)
	}
	srv := httptest.NewServer(s.Handler())
	// Close waits for requests in flight: tests end theirs first.
	t.Cleanup(srv.Close)
	return &testSim{Simulator: s, srv: srv, hc: srv.Client()}
}

// post sends body to path with ctx and returns the response (the caller
// closes its body).
func (ts *testSim) post(ctx context.Context, t *testing.T, path, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ts.hc.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return resp
}

// postJSON sends body and decodes a 200 answer into v.
func (ts *testSim) postJSON(t *testing.T, path, body string, v any) {
	t.Helper()
	resp := ts.post(context.Background(), t, path, body)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST %s: Content-Type %q", path, ct)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v\n%s", path, err, b)
	}
}

func (ts *testSim) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := ts.hc.Get(ts.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v\n%s", path, err, b)
	}
}

// sseReader reads server-sent events one data payload at a time.
type sseReader struct {
	sc *bufio.Scanner
}

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &sseReader{sc: sc}
}

// next returns the next event's data, or an error: io.EOF at a clean end,
// the transport's error at a broken one.
func (r *sseReader) next() (string, error) {
	for r.sc.Scan() {
		line := r.sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			return "", fmt.Errorf("not an SSE data line: %q", line)
		}
		return data, nil
	}
	if err := r.sc.Err(); err != nil {
		return "", err
	}
	return "", io.EOF
}

// readSSE reads a whole stream: every event's data up to and including
// [DONE], and that nothing follows it.
func readSSE(t *testing.T, body io.Reader) []string {
	t.Helper()
	r := newSSEReader(body)
	var events []string
	for {
		data, err := r.next()
		if err == io.EOF {
			t.Fatalf("stream ended without [DONE] after %d events", len(events))
		}
		if err != nil {
			t.Fatalf("read stream: %v", err)
		}
		events = append(events, data)
		if data == "[DONE]" {
			break
		}
	}
	if rest, err := io.ReadAll(body); err != nil || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("after [DONE]: %q, %v", rest, err)
	}
	return events
}

// statsAre waits until the simulator's counters reach want (Peak ignored
// when want.Peak is 0, the token counters when want's are all 0).
func (ts *testSim) statsAre(t *testing.T, want Stats) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, "stats", func() error {
		got := ts.Stats()
		if want.Peak == 0 {
			got.Peak = 0
		}
		if want.PromptTokens == 0 && want.CompletionTokens == 0 && want.PromptTokensCached == 0 && want.PromptTokensComputed == 0 {
			got.PromptTokens, got.CompletionTokens, got.PromptTokensCached, got.PromptTokensComputed = 0, 0, 0, 0
		}
		if got != want {
			return fmt.Errorf("stats %+v, want %+v", got, want)
		}
		return nil
	})
}
