package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// answering is a worker whose /health and /v1/models answer with the given
// statuses (0: 404).
func answering(t *testing.T, health, models int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := map[string]int{"/health": health, "/v1/models": models}[r.URL.Path]
		if code == 0 {
			code = http.StatusNotFound
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// collectOne runs one tick of a collector over the single --worker at url
// and returns that worker.
func collectOne(t *testing.T, c *Collector) wsapi.ProcessStats {
	t.Helper()
	got, err := c.Collect(context.Background())
	if err != nil || len(got) != 1 {
		t.Fatalf("Collect = %+v, %v; want the one --worker", got, err)
	}
	return got[0]
}

func foreignCollector(t *testing.T, url string, check func(context.Context, string) error) *Collector {
	t.Helper()
	spec, err := ParseWorkerSpec(url + ",model=ghost")
	if err != nil {
		t.Fatal(err)
	}
	return NewCollector(CollectorConfig{CgroupRoot: NoCgroups, Workers: []WorkerSpec{spec}, CheckHealth: check})
}

// A --worker server that refuses connections or answers with an error is
// reported down with why, every tick; one that answers /health, or
// /v1/models where it has no /health, is up.
func TestCollector_ForeignWorkerDownWithReason(t *testing.T) {
	refused := "http://127.0.0.1:" + strconv.Itoa(closedPort(t))
	for _, tc := range []struct {
		name, url, want string
	}{
		{"refused port", refused, "GET " + refused + "/health: connection refused"},
		{"health answers 500", answering(t, 500, 200), "/health: 500 Internal Server Error"},
		{"loading: 503 on both", answering(t, 503, 503), "/health: 503 Service Unavailable"},
		{"no health, models fail", answering(t, 0, 500), "/v1/models: 500 Internal Server Error"},
		{"no health and no models", answering(t, 0, 0), "/v1/models: 404 Not Found"},
		{"healthy", answering(t, 200, 200), ""},
		{"healthy with 204", answering(t, 204, 0), ""},
		{"no health but serves models (Ollama)", answering(t, 0, 200), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := foreignCollector(t, tc.url, nil)
			for tick := range 2 {
				w := collectOne(t, c)
				switch {
				case tc.want == "" && (w.Health != "" || w.HealthReason != ""):
					t.Fatalf("tick %d: health %q (%q), want up", tick, w.Health, w.HealthReason)
				case tc.want != "" && (w.Health != wsapi.HealthDown || !strings.Contains(w.HealthReason, tc.want)):
					t.Fatalf("tick %d: health %q (%q), want down with %q", tick, w.Health, w.HealthReason, tc.want)
				}
				if w.Model == nil || *w.Model != "ghost" {
					t.Errorf("model %v, want the configured one whatever its health", w.Model)
				}
			}
		})
	}
}

// A worker that comes up is reported up the next tick, and one that goes
// down is reported down the next tick.
func TestCollector_ForeignWorkerComesUpAndGoesDown(t *testing.T) {
	var up atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	c := foreignCollector(t, srv.URL, nil)
	for i, want := range []bool{false, true, true, false, true} {
		up.Store(want)
		if w := collectOne(t, c); (w.Health == "") != want {
			t.Fatalf("tick %d: health %q (%q), want up = %v", i, w.Health, w.HealthReason, want)
		}
	}
}

// A worker that cannot be connected to in time is down only once that has
// lasted silentFor (a lost packet is not a machine that is gone); one that
// was connected to but is slow to answer keeps its verdict (it lives: a
// server busy with large requests must keep them). A refused connection or an
// error status counts at once, an answer ends it all.
func TestHealth_DownRules(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const url = "GET http://10.0.0.9:8000/health: "
	noConn := fmt.Errorf(url+"%w", ErrNoConnection)
	slow := fmt.Errorf(url+"%w", ErrNoAnswer)
	refused := errors.New(url + "connection refused")
	var h health
	for i, tc := range []struct {
		at     time.Duration
		answer error
		down   string
	}{
		{0, slow, ""},
		{time.Second, slow, ""},
		{2 * time.Second, noConn, ""},
		{3 * time.Second, nil, ""},
		{4 * time.Second, noConn, ""},
		{13 * time.Second, noConn, ""},
		{14 * time.Second, noConn, url + "no connection in time for 10s"},
		{15 * time.Second, slow, url + "no connection in time for 10s"},
		{16 * time.Second, noConn, url + "no connection in time for 10s"},
		{17 * time.Second, refused, url + "connection refused"},
		{18 * time.Second, slow, url + "connection refused"},
		{19 * time.Second, nil, ""},
		{20 * time.Second, slow, ""},
		{21 * time.Second, refused, url + "connection refused"},
		{22 * time.Second, context.DeadlineExceeded, url + "connection refused"},
		{32 * time.Second, context.DeadlineExceeded, "context deadline exceeded for 10s"},
	} {
		h.note(tc.answer, t0.Add(tc.at))
		if h.down != tc.down {
			t.Fatalf("check %d at %v (%v): down %q, want %q", i, tc.at, tc.answer, h.down, tc.down)
		}
	}
}

// A worker that takes the connection but answers nothing in time (a server
// busy with large requests) is reported as it was: up here.
func TestCollector_SlowWorkerStaysUp(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := APIProber{}.CheckHealth(ctx, srv.URL)
	cancel()
	if !errors.Is(err, ErrNoAnswer) {
		t.Errorf("CheckHealth of a worker that answers nothing = %v, want ErrNoAnswer", err)
	}
	c := foreignCollector(t, srv.URL, nil)
	for i := range 2 {
		if w := collectOne(t, c); w.Health != "" {
			t.Fatalf("tick %d: health %q (%q), want up", i, w.Health, w.HealthReason)
		}
	}
}

// A tick cancelled by the caller (the node stopping) leaves the verdict as
// it was.
func TestCollector_StoppingKeepsTheVerdict(t *testing.T) {
	var answer error
	c := foreignCollector(t, "http://127.0.0.1:1", func(context.Context, string) error { return answer })
	answer = errors.New("GET http://127.0.0.1:1/health: connection refused")
	if w := collectOne(t, c); w.Health != wsapi.HealthDown || w.HealthReason != answer.Error() {
		t.Fatalf("refused: health %q (%q), want down", w.Health, w.HealthReason)
	}
	answer = nil
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, _ := c.Collect(ctx)
	if len(got) != 1 || got[0].Health != wsapi.HealthDown {
		t.Fatalf("after a cancelled tick: %+v, want the last verdict, down", got)
	}
	if w := collectOne(t, c); w.Health != "" {
		t.Fatalf("answered: health %q (%q), want up", w.Health, w.HealthReason)
	}
}

// Workers rbee started are not checked: their process says whether they
// live.
func TestCollector_OnlyForeignWorkersAreChecked(t *testing.T) {
	root := t.TempDir()
	writeCgroupWorker(t, root, "llm", "8080", 1)
	var checked []string
	spec, err := ParseWorkerSpec("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollector(CollectorConfig{CgroupRoot: root, Workers: []WorkerSpec{spec},
		CheckHealth: func(_ context.Context, url string) error { checked = append(checked, url); return nil }})
	if _, err := c.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(checked) != 1 || checked[0] != "http://127.0.0.1:1" {
		t.Errorf("checked %q, want only the --worker", checked)
	}
}

// The reason travels to every dashboard: a password in the worker's URL
// stays on the hive, and a long URL cannot make the queen refuse the report.
func TestCollector_DownReasonIsShortAndHidesPasswords(t *testing.T) {
	port := strconv.Itoa(closedPort(t))
	w := collectOne(t, foreignCollector(t, "http://user:s3cret@127.0.0.1:"+port, nil))
	if strings.Contains(w.HealthReason, "s3cret") || !strings.HasSuffix(w.HealthReason, "/health: connection refused") {
		t.Errorf("reason %q", w.HealthReason)
	}
	err := APIProber{}.CheckHealth(context.Background(), "http://user:s3cret@127.0.0.1:"+port)
	if want := "GET http://user:xxxxx@127.0.0.1:" + port + "/health: connection refused"; err == nil || err.Error() != want {
		t.Errorf("CheckHealth = %v, want %q", err, want)
	}
	w = collectOne(t, foreignCollector(t, "http://127.0.0.1:"+port+"/"+strings.Repeat("p", 300), nil))
	tel := wsapi.HiveTelemetry{HiveID: "h", Workers: []wsapi.ProcessStats{w}}
	if w.Health != wsapi.HealthDown || len(w.HealthReason) > maxReason || tel.Validate("h") != nil {
		t.Errorf("reason of %d bytes (%q): %v", len(w.HealthReason), w.HealthReason, tel.Validate("h"))
	}
}
