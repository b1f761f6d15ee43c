package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/termview"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata/")

// statusNow is the clock of the fixture status_cluster.json: hive gpu-c
// last reported 42 s before it.
var statusNow = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

// termviewTestdata holds the rendering's fixtures, which the commands'
// tests serve as /v1/cluster.
var termviewTestdata = filepath.Join("..", "..", "internal", "termview", "testdata")

// loadClusterFixture reads termview's status_cluster.json: four members (one
// suspect, one left), hives with busy, saturated, failing, unknown-model and
// simulated workers, an offline hive and one without workers.
func loadClusterFixture(tb testing.TB) (*api.ClusterView, []byte) {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(termviewTestdata, "status_cluster.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var v api.ClusterView
	if err := json.Unmarshal(data, &v); err != nil {
		tb.Fatalf("decode fixture: %v", err)
	}
	return &v, data
}

// checkGolden compares got with testdata/name, or rewrites it under -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	testutil.Golden(t, filepath.Join("testdata", name), got, *updateGolden)
}

// fakeNode serves body as /v1/cluster, and wsapi's feed of hub (when not
// nil), as a node would: with a key, over the cluster's mutual TLS, to
// callers that hold the key. It is closed when t ends.
func fakeNode(t *testing.T, body []byte, key wsapi.Key, hub *wsapi.Hub) *fakeNodeServer {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathCluster, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
	if hub != nil {
		mux.HandleFunc("GET "+wsapi.FeedPath, func(w http.ResponseWriter, r *http.Request) {
			_ = wsapi.ServeFeed(ctx, w, r, hub, &wsapi.FeedOptions{FlushWindow: -1})
		})
	}
	f := &fakeNodeServer{Server: httptest.NewUnstartedServer(mux), stopFeeds: stop}
	if key.IsZero() {
		f.Start()
		f.addr = strings.TrimPrefix(f.URL, "http://")
	} else {
		ct, err := key.NewClusterTLS("fake")
		if err != nil {
			t.Fatal(err)
		}
		f.TLS = ct.ServerConfig()
		f.StartTLS()
		f.addr = strings.TrimPrefix(f.URL, "https://")
	}
	t.Cleanup(f.Close)
	return f
}

type fakeNodeServer struct {
	*httptest.Server
	addr      string // host:port
	stopFeeds context.CancelFunc
}

// Close stops the server and ends its feeds (hijacked connections, which
// httptest leaves alone), as a node that stops does.
func (f *fakeNodeServer) Close() {
	f.stopFeeds()
	f.Server.Close()
}

// runApp runs the CLI in this process and returns its stdout.
func runApp(args ...string) (string, error) {
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(append([]string{"rbee"}, args...))
	return out.String(), err
}

func TestStatusCommand(t *testing.T) {
	v, data := loadClusterFixture(t)
	key, err := wsapi.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	srv := fakeNode(t, data, key, nil)
	addr := srv.addr

	t.Run("json", func(t *testing.T) {
		out, err := runApp("status", "--json", "--http-addr", addr, "--cluster-key", key.String())
		if err != nil {
			t.Fatal(err)
		}
		checkGolden(t, "status_json.golden", out)
		var got api.ClusterView
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("--json output does not decode: %v", err)
		}
		if !reflect.DeepEqual(&got, v) {
			t.Errorf("--json output decodes to\n%+v\nwant\n%+v", got, *v)
		}
	})
	t.Run("text", func(t *testing.T) {
		out, err := runApp("status", "--http-addr", addr, "--cluster-key", key.String())
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		termview.RenderStatus(&want, v, statusNow, termview.StatusOptions{})
		// Only the offline hive's "last report ... ago" depends on the
		// clock.
		if got, w := dropAgo(out), dropAgo(want.String()); got != w {
			t.Errorf("rbee status printed\n%s\nwant\n%s", out, want.String())
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		other, _ := wsapi.GenerateKey()
		_, err := runApp("status", "--http-addr", addr, "--cluster-key", other.String())
		if err == nil || !strings.Contains(err.Error(), "cluster key") {
			t.Errorf("err = %v, want one saying the key is not the cluster's", err)
		}
	})
}

func dropAgo(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.Contains(l, "last report") {
			lines[i] = ""
		}
	}
	return strings.Join(lines, "\n")
}

func TestStatusCommand_NodeUnreachable(t *testing.T) {
	addr := closedAddr(t)
	for _, args := range [][]string{
		{"status", "--http-addr", addr},
		{"status", "--json", "--http-addr", addr},
		{"top", "--once", "--http-addr", addr},
	} {
		out, err := runApp(args...)
		if err == nil {
			t.Fatalf("rbee %s: no error; printed %q", strings.Join(args, " "), out)
		}
		for _, w := range []string{"get cluster status", "reach node at " + addr, "--http-addr"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("rbee %s: error %q lacks %q", strings.Join(args, " "), err, w)
			}
		}
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestE2E_StatusOfOneNodeCluster runs `rbee status` against a real node
// whose hive reports one simulated worker.
func TestE2E_StatusOfOneNodeCluster(t *testing.T) {
	c := newCluster(t)
	sim := startSimulator(t, t.TempDir(), 2)
	p := c.start(nodeSpec{name: "n0", extra: []string{"--worker", "http://" + sim}})[0]
	args := []string{"--http-addr", p.httpAddr, "--cluster-key-file", c.keyFile}

	// The hive also reports any other rbee.slice worker on this machine
	// (other tests' `rbee worker run`), so look for ours by its group.
	var v api.ClusterView
	var ours *wsapi.ProcessStats
	// Every 50 ms, not the default: each look runs the rbee binary.
	testutil.Every(50*time.Millisecond).Eventually(t, 20*time.Second, "rbee status --json shows the worker", func() error {
		out, errOut, err := runRbee(append([]string{"status", "--json"}, args...)...)
		if err != nil {
			return fmt.Errorf("%w: %s", err, errOut)
		}
		v, ours = api.ClusterView{}, nil
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("rbee status --json printed %q: %v", out, err)
		}
		if len(v.Hives) != 1 || !v.Hives[0].Online {
			return errors.New(out)
		}
		for i, w := range v.Hives[0].Workers {
			if w.Group == "ext" {
				ours = &v.Hives[0].Workers[i]
			}
		}
		// The hive lists the worker at once and learns its slots and
		// that it is simulated when it has asked the worker's API.
		if v.Queen != "n0" || ours == nil || !ours.Simulated || ours.Slots != 2 ||
			!slices.ContainsFunc(v.Queues, func(q wsapi.QueueStats) bool { return q.Model == "m" && q.Slots == 2 }) {
			return errors.New(out)
		}
		return nil
	})
	if v.Node != "n0" || len(v.Members) != 1 || v.Members[0].Status != "alive" || !ours.Simulated || ours.Model == nil || *ours.Model != "m" {
		t.Errorf("rbee status --json: %+v", v)
	}

	out := c.rbee(append([]string{"status"}, args...)...)
	t.Logf("rbee status:\n%s", out)
	// Into a pipe: every column, and no escape codes.
	if strings.Contains(out, "\x1b") || !strings.Contains(out, "IO R/W MB/s") {
		t.Errorf("rbee status into a pipe: escape codes, or columns dropped:\n%q", out)
	}
	lines := strings.Split(out, "\n")
	for _, want := range [][]string{
		{"queen n0", "asked n0"},
		{"members 1/1 alive", "hives 1/1 online", "workers "},
		{"n0", p.gossipAddr, p.httpAddr, "queen,hive", "alive", "*"},
		{"m", "0", "0", "2"},
		{"n0", "ext/", "idle", "0/2", "GiB*", "m"},
		{"* simulated GPU figures"},
	} {
		if !testutil.HasLineWith(lines, want) {
			t.Errorf("rbee status: no line with all of %q", want)
		}
	}

	out = c.rbee(append([]string{"top", "--once"}, args...)...)
	if !strings.HasPrefix(out, "rbee top  "+p.httpAddr) || !testutil.HasLineWith(strings.Split(out, "\n"), []string{"n0", "ext/", "idle"}) {
		t.Errorf("rbee top --once printed:\n%s", out)
	}

	_, errOut, err := runRbee("status", "--http-addr", closedAddr(t))
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(errOut, "rbee: get cluster status: reach node at") {
		t.Errorf("rbee status against nothing: %v, stderr %q; want exit 1 and a clear error", err, errOut)
	}
}

// lifecycleFixture reads termview's lifecycle_cluster.json, a cluster in the
// middle of the model lifecycle (termview's lifecycleFixture): gpu-a loading
// qwen-32b, gpu-b on simulated GPUs, a catalog entry that failed twice and
// one whose file is missing.
func lifecycleFixture(tb testing.TB) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(termviewTestdata, "lifecycle_cluster.json"))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// TestStatusCommand_ModelLifecycle: `rbee status` takes the hives'
// catalogs, GPUs and managed workers from /v1/cluster, and --json keeps them.
func TestStatusCommand_ModelLifecycle(t *testing.T) {
	srv := fakeNode(t, lifecycleFixture(t), wsapi.Key{}, nil)
	out, err := runApp("status", "--http-addr", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	for _, w := range [][]string{{"models/30002", "loading"}, {"mistral-7b", "failed 2x", "CUDA out of memory"}, {"gpu-b", "0.0/24.0 GiB*"}} {
		if !testutil.HasLineWith(lines, w) {
			t.Errorf("rbee status: no line with all of %q in\n%s", w, out)
		}
	}
	out, err = runApp("status", "--json", "--http-addr", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	var got api.ClusterView
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("rbee status --json: %v\n%s", err, out)
	}
	if len(got.Hives) != 2 || len(got.Hives[0].Catalog) != 4 || len(got.Hives[0].Managed) != 2 || len(got.Hives[1].GPUs) != 1 {
		t.Errorf("rbee status --json lost the lifecycle:\n%s", out)
	}
}
