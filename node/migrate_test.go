package node_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// failingOnce serves a simulator whose first stream sends an error event
// after its first tokens and ends there (as an engine that fails mid-answer,
// say out of memory, does); every later request is served whole.
type failingOnce struct {
	sim    http.Handler
	broken *atomic.Bool // shared by the workers: one stream breaks in all
}

func (f failingOnce) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !f.broken.CompareAndSwap(false, true) {
		f.sim.ServeHTTP(w, r)
		return
	}
	f.sim.ServeHTTP(&breakAfter{ResponseWriter: w, left: 6}, r)
}

// breakAfter passes on left writes (the simulator writes an event a
// write), then writes an error event instead and fails the rest.
type breakAfter struct {
	http.ResponseWriter
	left int
}

func (b *breakAfter) Write(p []byte) (int, error) {
	if b.left == 0 {
		return 0, errors.New("broken")
	}
	if b.left--; b.left == 0 {
		_, _ = b.ResponseWriter.Write([]byte(`data: {"error":{"message":"CUDA error: out of memory","type":"server_error","code":500}}` + "\n\n"))
		return 0, errors.New("broken")
	}
	return b.ResponseWriter.Write(p)
}

func (b *breakAfter) Flush() { b.ResponseWriter.(http.Flusher).Flush() }

// TestMigration_ErrorEventMidStream: a worker that sends an error event
// mid-stream has the stream continued on the hive's other worker; the
// client never sees the error, and gets the whole answer.
func TestMigration_ErrorEventMidStream(t *testing.T) {
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
	_, _, entry := routeCluster(t, c, endpointCollector{})
	r, err := post(context.Background(), entry.HTTPAddr(), api.PathChat, chat("m", true))
	if err != nil || r.status != 200 {
		t.Fatalf("stream: %d %q %v", r.status, r.body, err)
	}
	if !broken.Load() {
		t.Fatal("no stream broke")
	}
	if strings.Contains(r.body, "CUDA") {
		t.Fatalf("the client got the worker's error: %q", r.body)
	}
	var text strings.Builder
	for _, line := range strings.Split(r.body, "\n") {
		if i := strings.Index(line, `"content":"`); i >= 0 {
			rest := line[i+len(`"content":"`):]
			text.WriteString(rest[:strings.IndexByte(rest, '"')])
		}
	}
	if text.String() != sim.Text(30) || !strings.HasSuffix(r.body, "data: [DONE]\n\n") {
		t.Fatalf("text %q, want %q, and [DONE] last:\n%s", text.String(), sim.Text(30), r.body)
	}
}
