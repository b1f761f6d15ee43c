package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/telemetry"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/scheduler"
)

// servedModels is what GET /v1/models on addr lists.
func servedModels(t *testing.T, addr string) []string {
	t.Helper()
	body, err := httpGet("http://" + addr + api.PathModels)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Data []struct{ ID string } `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET /v1/models: %q: %v", body, err)
	}
	var ids []string
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	return ids
}

// TestDown_OnlyWorkerDownFailsAtOnceNamingIt: a hive whose only worker is a
// --worker server that nothing answers on reports it down with why; the
// queen shows it down, /v1/models leaves its model out, and a request for it
// gets a 503 at once that names the worker and the cause, rather than waiting
// out the queue or blaming "workers in a row". Once the server is up it is
// served.
func TestDown_OnlyWorkerDownFailsAtOnceNamingIt(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close() // nothing listens there until the worker comes up below
	url := "http://127.0.0.1:" + port
	spec, err := telemetry.ParseWorkerSpec(url + ",model=ghost")
	if err != nil {
		t.Fatal(err)
	}
	coll := telemetry.NewCollector(telemetry.CollectorConfig{CgroupRoot: telemetry.NoCgroups, Workers: []telemetry.WorkerSpec{spec}})
	// Requests would wait a minute for a slot: failing at once is the
	// feature, not a short queue timeout.
	queue := nodetest.WithQueue(16, time.Minute)
	a := nodetest.Start(t, "hive-a", nodetest.WithCollector(coll), queue)
	c := nodetest.Start(t, "c", nodetest.WithRoles(), nodetest.WithJoin(a.GossipAddr()), queue)

	worker := "hive-a/" + telemetry.DefaultStaticGroup + "/" + port
	cause := "GET " + url + "/health: connection refused"
	testutil.Eventually(t, 10*time.Second, "queen shows the worker down", func() error {
		if _, err := agreedQueen(a, c); err != nil {
			return err
		}
		for _, h := range a.Registry().Hives(time.Now()) {
			for _, w := range h.Workers {
				if h.HiveID+"/"+w.ID() != worker {
					continue
				}
				if w.State == scheduler.StateDown && w.StateReason == "the hive cannot reach it: "+cause &&
					w.Health == "down" && w.HealthReason == cause {
					return nil
				}
				return fmt.Errorf("worker %s: state %q (%q), health %q (%q)", worker, w.State, w.StateReason, w.Health, w.HealthReason)
			}
		}
		return fmt.Errorf("worker %s not reported yet", worker)
	})
	for _, n := range []*nodetest.Node{a, c} {
		if ms := servedModels(t, n.HTTPAddr()); len(ms) != 0 {
			t.Errorf("GET /v1/models via %s lists %q, want nothing: the only worker is down", n.Name(), ms)
		}
	}

	// A guard, far below the minute the request would otherwise wait.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, err := post(ctx, c.HTTPAddr(), api.PathChat, chat("ghost", false))
	want := `model \"ghost\": worker ` + worker + ` is down (` + cause + `)`
	if err != nil || r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, want) {
		t.Fatalf("request for ghost: %d %s (%v), want 503 with %s", r.status, r.body, err, want)
	}

	// The worker comes up on its port: the next ticks find it, list its
	// model and serve it.
	fw := &fakeWorker{name: "ghost-worker"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("/", fw.serve)
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	if srv.Listener, err = net.Listen("tcp", "127.0.0.1:"+port); err != nil {
		t.Skipf("port %s was taken meanwhile: %v", port, err)
	}
	srv.Start()
	defer srv.Close()
	testutil.Eventually(t, 10*time.Second, "ghost served once its worker is up", func() error {
		if ms := servedModels(t, c.HTTPAddr()); len(ms) != 1 || ms[0] != "ghost" {
			return fmt.Errorf("GET /v1/models lists %q", ms)
		}
		return nil
	})
	r, err = post(ctx, c.HTTPAddr(), api.PathChat, chat("ghost", false))
	if err != nil || r.status != http.StatusOK || !strings.Contains(r.body, "hello from ghost-worker") {
		t.Fatalf("request once up: %d %s (%v)", r.status, r.body, err)
	}
}
