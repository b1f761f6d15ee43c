package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

const loadChat = `{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}`

// httpAnswer is one response's status and body.
type httpAnswer struct {
	status int
	body   []byte
}

// do sends method path (with body for a POST) and reads the whole httpAnswer,
// and whether the simulator was certainly still loading when it came
// (the answer arrived before LoadedAt).
func (ts *testSim) do(t *testing.T, method, path, body string) (httpAnswer, bool) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, ts.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := ts.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s %s: %v", method, path, err)
	}
	return httpAnswer{resp.StatusCode, b}, time.Now().Before(ts.LoadedAt())
}

// isLoadingError checks a 503 in llama-server's loading shape.
func isLoadingError(a httpAnswer) error {
	if a.status != http.StatusServiceUnavailable {
		return fmt.Errorf("status %d, want 503: %s", a.status, a.body)
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    int    `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(a.body, &e); err != nil {
		return fmt.Errorf("decode %s: %v", a.body, err)
	}
	if e.Error.Message != "Loading model" || e.Error.Type != "unavailable_error" || e.Error.Code != 503 {
		return fmt.Errorf("error %+v, want Loading model, unavailable_error, 503", e.Error)
	}
	return nil
}

func TestLoadTime_503UntilLoaded(t *testing.T) {
	const loadTime = 300 * time.Millisecond
	ts := startSim(t, Config{LoadTime: loadTime})
	if ts.Loaded() {
		t.Fatal("Loaded() right after New")
	}

	// Each answer below is judged only if it came before the load ended;
	// a machine too slow to ask within 300 ms proves nothing either way.
	checks := []struct{ method, path, body string }{
		{"GET", "/health", ""},
		{"GET", "/v1/health", ""},
		{"POST", "/v1/chat/completions", loadChat},
		{"POST", "/chat/completions", loadChat},
		{"POST", "/v1/completions", `{"prompt":"hi","max_tokens":1}`},
		{"POST", "/v1/embeddings", `{"input":"hi"}`},
		{"GET", "/v1/models", ""},
		{"GET", "/props", ""},
	}
	judged := 0
	for _, c := range checks {
		a, loading := ts.do(t, c.method, c.path, c.body)
		if !loading {
			break
		}
		judged++
		if err := isLoadingError(a); err != nil {
			t.Errorf("%s %s while loading: %v", c.method, c.path, err)
		}
	}
	// The simulator's own figures answer throughout, the weights counted.
	var g GPU
	ts.getJSON(t, "/rbee/sim/gpu", &g)
	if g.VRAMMB != DefaultModelVRAMMB || g.TotalVRAMMB != DefaultTotalVRAMMB || g.UtilPct != 0 {
		t.Errorf("/rbee/sim/gpu = %+v, want the weights of an idle GPU", g)
	}
	if judged == 0 {
		t.Logf("the model loaded before the first answer; nothing judged while loading")
	}
	// Refused requests are not inference the simulator served.
	ts.statsAre(t, Stats{})

	testutil.Eventually(t, 5*time.Second, "GET /health answers 200", func() error {
		a, _ := ts.do(t, "GET", "/health", "")
		if a.status != http.StatusOK {
			return fmt.Errorf("status %d: %s", a.status, a.body)
		}
		var h map[string]string
		if err := json.Unmarshal(a.body, &h); err != nil || h["status"] != "ok" {
			return testutil.Stop(fmt.Errorf("body %s, want {\"status\":\"ok\"}", a.body))
		}
		return nil
	})
	if !ts.Loaded() {
		t.Error("/health answers 200 but Loaded() is false")
	}
	var c chatAnswer
	ts.postJSON(t, "/v1/chat/completions", loadChat, &c)
	if len(c.Choices) != 1 || c.Choices[0].Message == nil || c.Choices[0].Message.Content == nil || *c.Choices[0].Message.Content == "" {
		t.Errorf("chat completion after loading = %+v", c)
	}
	var models modelList
	ts.getJSON(t, "/v1/models", &models)
	if len(models.Data) != 1 || models.Data[0].ID != "sim-model" {
		t.Errorf("/v1/models after loading = %+v", models)
	}
	ts.statsAre(t, Stats{Served: 1, Peak: 1})
}

func TestLoadTime_ZeroServesAtOnce(t *testing.T) {
	ts := startSim(t, Config{})
	if !ts.Loaded() {
		t.Error("Loaded() false without a LoadTime")
	}
	if ts.Handler() != http.Handler(ts.mux) {
		t.Error("Handler wraps the routes without a LoadTime")
	}
	var h map[string]string
	ts.getJSON(t, "/health", &h)
	if h["status"] != "ok" {
		t.Errorf("/health = %v", h)
	}
	var c chatAnswer
	ts.postJSON(t, "/v1/chat/completions", loadChat, &c)
	if len(c.Choices) != 1 || c.Choices[0].Message == nil || c.Choices[0].Message.Content == nil {
		t.Errorf("chat completion = %+v", c)
	}
}

func TestLoadTime_Validated(t *testing.T) {
	for _, d := range []time.Duration{-time.Millisecond, maxLoadTime + 1} {
		if _, err := New(Config{Model: "m", LoadTime: d}); err == nil || !strings.Contains(err.Error(), "load time") {
			t.Errorf("LoadTime %v: err %v, want a load time error", d, err)
		}
	}
}

// chatAnswer is a chat completion with a text message.
type chatAnswer struct {
	Choices []struct {
		Message *chatContent `json:"message"`
	} `json:"choices"`
}
