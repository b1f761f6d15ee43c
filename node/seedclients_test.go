package node_test

// The seeds' own clients against rbee, unchanged: their dashboard reads
// GET /v1/heartbeats/stream as Server-Sent Events, their hives POST
// /v1/hive-heartbeat.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

func readSeed(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "seeds", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openSSE reads a node's feed as the seed's dashboard does: an SSE stream,
// each message's data one event, decoded generically (map[string]any) as
// JavaScript would.
func openSSE(t *testing.T, httpAddr string) *feedClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+wsapi.FeedPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET feed as SSE: %v", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		resp.Body.Close()
		t.Fatalf("GET feed as SSE: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	c := &feedClient{events: make(chan any, 4096), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		var data []string
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if len(data) == 0 {
					continue // after a keep-alive comment
				}
				var ev map[string]any
				if err := json.Unmarshal([]byte(strings.Join(data, "\n")), &ev); err != nil {
					t.Errorf("SSE data is not a JSON object: %v: %q", err, data)
					return
				}
				data = nil
				select {
				case c.events <- ev:
				default:
				}
			case strings.HasPrefix(line, ":"):
			case strings.HasPrefix(line, "data: "):
				data = append(data, strings.TrimPrefix(line, "data: "))
			default:
				t.Errorf("SSE line %q: the seed's dashboard reads unnamed data messages only", line)
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-c.done
	})
	return c
}

// waitSSE returns the first event on c for which match returns true.
func waitSSE(t *testing.T, c *feedClient, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	return c.waitEvent(t, 10*time.Second, what, func(ev any) bool { return match(ev.(map[string]any)) }).(map[string]any)
}

func eventIs(typ, hive string) func(map[string]any) bool {
	return func(ev map[string]any) bool {
		return ev["type"] == typ && (hive == "" || ev["hive_id"] == hive)
	}
}

// assertSeedShape checks that got has every field of the seed's example
// with a value of the same JSON kind (a model may be null), and so for every
// worker.
func assertSeedShape(t *testing.T, got map[string]any, seed []byte) {
	t.Helper()
	var want map[string]any
	if err := json.Unmarshal(seed, &want); err != nil {
		t.Fatal(err)
	}
	sameKinds(t, got["type"], got, want)
	if ws, ok := want["workers"].([]any); ok && len(ws) > 0 {
		gws, _ := got["workers"].([]any)
		for i, gw := range gws {
			gm, ok := gw.(map[string]any)
			if !ok {
				t.Errorf("worker %d is %T", i, gw)
				continue
			}
			sameKinds(t, fmt.Sprint(got["type"], " worker ", i), gm, ws[0].(map[string]any))
		}
	}
}

func sameKinds(t *testing.T, what any, got, want map[string]any) {
	t.Helper()
	for k, wv := range want {
		gv, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%v lacks the seed's %q", what, k)
		case k == "model" && gv == nil:
		case fmt.Sprintf("%T", gv) != fmt.Sprintf("%T", wv):
			t.Errorf("%v: %q is %T, the seed's is %T", what, k, gv, wv)
		}
	}
}

// The seed's dashboard, reading the feed as SSE from the queen and from a
// node that is not queen, gets hive_telemetry and queen events in the seed's
// shapes.
func TestSeedClients_SSEFeedOnQueenAndFollower(t *testing.T) {
	key := mustKey(t)
	worker := wsapi.ProcessStats{PID: 4242, Group: "llm", Instance: "8080", CPUPct: 12.5, RSSMB: 2048,
		GPUUtilPct: 40, VRAMMB: 4096, TotalVRAMMB: 24576, UptimeS: 60, Model: ptr("llama-3.2-1b")}
	a := nodetest.Start(t, "a", nodetest.WithKey(key))
	b := nodetest.Start(t, "b", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()), nodetest.WithCollector(staticWorkers(worker)))
	testutil.Eventually(t, 10*time.Second, "a is queen for both", func() error {
		q, err := agreedQueen(a, b)
		if err == nil && q != "a" {
			err = fmt.Errorf("queen %s", q)
		}
		return err
	})
	for _, n := range []*nodetest.Node{a, b} {
		t.Run("from "+n.Name(), func(t *testing.T) {
			feed := openSSE(t, n.HTTPAddr())
			ht := waitSSE(t, feed, "hive_telemetry from b", eventIs(wsapi.TypeHiveTelemetry, "b"))
			assertSeedShape(t, ht, readSeed(t, "hive_telemetry.json"))
			if ws := ht["workers"].([]any); len(ws) != 1 || ws[0].(map[string]any)["model"] != "llama-3.2-1b" {
				t.Errorf("b's workers = %v", ws)
			}
			qe := waitSSE(t, feed, "a queen event counting both hives", func(ev map[string]any) bool {
				return ev["type"] == wsapi.TypeQueen && ev["hives_online"] == 2.0
			})
			assertSeedShape(t, qe, readSeed(t, "queen.json"))
			if qe["queen_id"] != "a" || fmt.Sprint(qe["worker_ids"]) != "[b/llm/8080]" {
				t.Errorf("queen event = %v", qe)
			}
		})
	}
}

// postHeartbeat sends body to path on the node at addr and returns the status and
// the answer.
func postHeartbeat(t *testing.T, addr, path string, body []byte) (int, []byte) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Post("http://"+addr+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func clusterHive(t *testing.T, addr, hive string) (api.HiveView, error) {
	t.Helper()
	c := api.NewClient(addr, wsapi.Key{})
	defer c.Close()
	cl, err := c.Cluster(context.Background())
	if err != nil {
		return api.HiveView{}, err
	}
	if cl.HivesError != "" {
		return api.HiveView{}, errors.New(cl.HivesError)
	}
	for _, h := range cl.Hives {
		if h.HiveID == hive {
			return h, nil
		}
	}
	return api.HiveView{}, fmt.Errorf("no hive %s in /v1/cluster of %s", hive, addr)
}

// The seed's hives post their heartbeat to the queen or to any other node
// (which forwards it to the queen): the hive shows in /v1/cluster and on the
// feed, but rbee schedules nothing on it, since nothing would serve a lease.
func TestSeedClients_HeartbeatReachesQueenFromAnyNode(t *testing.T) {
	key := mustKey(t)
	a := nodetest.Start(t, "a", nodetest.WithKey(key))
	b := nodetest.Start(t, "b", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "a is queen for both", func() error {
		q, err := agreedQueen(a, b)
		if err == nil && q != "a" {
			err = fmt.Errorf("queen %s", q)
		}
		return err
	})
	heartbeat := readSeed(t, "hive_heartbeat.json") // the seed hive's shape: hive.id "localhost"
	telemetry := readSeed(t, "hive_telemetry.json") // the queen event's shape: hive_id "hive-gpu-1"

	feed := openSSE(t, b.HTTPAddr())
	waitSSE(t, feed, "a queen event (the relay is up)", eventIs(wsapi.TypeQueen, ""))
	for _, p := range []struct {
		to   *nodetest.Node
		body []byte
		hive string
	}{{a, heartbeat, "localhost"}, {b, telemetry, "hive-gpu-1"}} {
		code, ans := postHeartbeat(t, p.to.HTTPAddr(), api.PathHiveHeartbeat, p.body)
		var acc api.HeartbeatAccepted
		if err := json.Unmarshal(ans, &acc); code != http.StatusOK || err != nil || !acc.Accepted || acc.HiveID != p.hive || acc.Queen != "a" {
			t.Fatalf("POST %s to %s: %d %s, want it accepted by queen a", p.hive, p.to.Name(), code, ans)
		}
		ev := waitSSE(t, feed, "hive_telemetry from "+p.hive, eventIs(wsapi.TypeHiveTelemetry, p.hive))
		assertSeedShape(t, ev, readSeed(t, "hive_telemetry.json"))
	}

	// In the view of both nodes, online while it posts, with its workers
	// unavailable to rbee's requests.
	for _, n := range []*nodetest.Node{a, b} {
		testutil.Eventually(t, 10*time.Second, "both heartbeat hives in "+n.Name()+"'s /v1/cluster", func() error {
			postHeartbeat(t, a.HTTPAddr(), api.PathHiveHeartbeat, heartbeat)
			postHeartbeat(t, b.HTTPAddr(), api.PathHiveHeartbeat, telemetry)
			for _, hive := range []string{"localhost", "hive-gpu-1"} {
				h, err := clusterHive(t, n.HTTPAddr(), hive)
				if err != nil {
					return err
				}
				if !h.Online || len(h.Workers) == 0 {
					return fmt.Errorf("%s: %+v", hive, h)
				}
			}
			return nil
		})
	}
	h, _ := clusterHive(t, b.HTTPAddr(), "localhost")
	if len(h.Workers) != 2 || h.Workers[0].PID != 12345 || h.Workers[0].Model == nil || *h.Workers[0].Model != "llama-3.2-1b" ||
		h.Workers[0].VRAMMB != 8192 || h.Workers[1].Model != nil {
		t.Errorf("localhost's workers = %+v, want the seed heartbeat's", h.Workers)
	}
	for _, w := range h.Workers {
		if w.State != "saturated" || !strings.Contains(w.StateReason, api.PathHiveHeartbeat) {
			t.Errorf("worker %s: state %q (%q), want unavailable, saying it is heartbeat-only", w.ID(), w.State, w.StateReason)
		}
	}
	postHeartbeat(t, a.HTTPAddr(), api.PathHiveHeartbeat, heartbeat) // online (metrics list online hives only)
	metrics, err := httpGet("http://" + a.HTTPAddr() + "/metrics")
	if err != nil || !strings.Contains(string(metrics), `rbee_worker_vram_used_bytes{hive="localhost",model="llama-3.2-1b"`) {
		t.Errorf("the queen's metrics lack the heartbeat hive's worker (%v)", err)
	}
	for _, q := range node.QueenQueues(a.Node) {
		if q.Model == "llama-3.2-1b" && q.Slots > 0 {
			t.Errorf("the scheduler serves %s from a heartbeat-only hive: %+v", q.Model, q)
		}
	}
	// A heartbeat forwarded to a node that is not queen (two nodes that
	// disagreed for a moment) is not forwarded again: 421 naming the queen.
	req, _ := http.NewRequest(http.MethodPost, "http://"+b.HTTPAddr()+api.PathHiveHeartbeat, bytes.NewReader(heartbeat))
	req.Header.Set("X-Rbee-Forwarded", "c")
	if resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req); err != nil {
		t.Error(err)
	} else {
		ans, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(string(ans), "queen is a at "+a.HTTPAddr()) {
			t.Errorf("forwarded heartbeat on a non-queen: %s %s, want 421 naming queen a", resp.Status, ans)
		}
	}
	qe := waitSSE(t, feed, "a queen event counting the heartbeat hives", func(ev map[string]any) bool {
		ids, _ := ev["hive_ids"].([]any)
		return ev["type"] == wsapi.TypeQueen && slices.Contains(ids, any("localhost")) && slices.Contains(ids, any("hive-gpu-1"))
	})
	if qe["workers_available"] != 0.0 {
		t.Errorf("queen event %v counts heartbeat-only workers as available", qe)
	}
}

// A heartbeat the queen cannot take gets a 400, 409 or 413 in the OpenAI
// error shape, from the node it was posted to, and disturbs nothing: the
// rbee hive's session goes on reporting, good heartbeats are still taken.
func TestSeedClients_BadHeartbeatsAreRefusedAndHarmNothing(t *testing.T) {
	key := mustKey(t)
	a := nodetest.Start(t, "a", nodetest.WithKey(key))
	b := nodetest.Start(t, "b", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "b reports to queen a", func() error {
		for _, h := range a.Registry().Hives(time.Now()) {
			if h.HiveID == "b" && h.Online {
				return nil
			}
		}
		return errors.New("b not online")
	})
	big := bytes.Repeat([]byte(" "), wsapi.DefaultReadLimit+1)
	for _, tc := range []struct {
		name string
		body string
		want int
	}{
		{"malformed JSON", `{"hive_id":`, 400},
		{"wrong field type", `{"hive_id":"x","workers":[{"pid":"one"}]}`, 400},
		{"not a heartbeat", `{"type":"queen","hive_id":"x"}`, 400},
		{"no hive named", `{"workers":[]}`, 400},
		{"a bad hive name", `{"hive_id":"x y","workers":[]}`, 400},
		{"two names", `{"hive_id":"x","hive":{"id":"y"},"workers":[]}`, 400},
		{"duplicate names", `{"hive_id":"x","hive_id":"y"}`, 400},
		{"a control character", `{"hive_id":"x","workers":[{"group":"llm","instance":"1","model":"m\u0007"}]}`, 400},
		{"oversized", string(big), 413},
		{"an rbee node's name", `{"hive_id":"b","workers":[]}`, 409},
	} {
		for _, n := range []*nodetest.Node{a, b} {
			t.Run(tc.name+" to "+n.Name(), func(t *testing.T) {
				code, ans := postHeartbeat(t, n.HTTPAddr(), api.PathHiveHeartbeat, []byte(tc.body))
				if code != tc.want {
					t.Fatalf("status %d, want %d: %s", code, tc.want, ans)
				}
				var e struct {
					Error struct {
						Message string `json:"message"`
						Type    string `json:"type"`
					} `json:"error"`
				}
				if err := json.Unmarshal(ans, &e); err != nil || e.Error.Message == "" || e.Error.Type != "invalid_request_error" {
					t.Errorf("answer is not an OpenAI error: %s", ans)
				}
			})
		}
	}
	for _, h := range a.Registry().Hives(time.Now()) {
		if h.HiveID != "a" && h.HiveID != "b" {
			t.Errorf("a refused heartbeat reached the registry: %+v", h)
		}
		if h.HiveID == "b" && len(h.Workers) != 0 {
			t.Errorf("b's view changed: %+v", h)
		}
	}
	before := time.Now()
	testutil.Eventually(t, 5*time.Second, "b's session still reporting", func() error {
		for _, h := range a.Registry().Hives(time.Now()) {
			if h.HiveID == "b" && h.LastSeen.After(before) {
				return nil
			}
		}
		return errors.New("no report from b since the bad heartbeats")
	})
	if code, ans := postHeartbeat(t, b.HTTPAddr(), api.PathHiveHeartbeat, readSeed(t, "hive_heartbeat.json")); code != http.StatusOK {
		t.Errorf("a good heartbeat after the bad ones: %d %s", code, ans)
	}
}

// The heartbeat changes the cluster's view, so it takes what the admin calls
// take: the cluster's TLS or loopback, not the read token. The SSE feed takes
// what the WebSocket feed takes.
func TestSeedClients_Auth(t *testing.T) {
	key := mustKey(t)
	n := nodetest.Start(t, "a", nodetest.WithKey(key))
	h := n.Handler()
	remote, loop := "192.0.2.7:40000", "127.0.0.1:40000"
	body := string(readSeed(t, "hive_heartbeat.json"))
	token := map[string]string{"Authorization": "Bearer " + key.HTTPToken()}
	for _, tc := range []struct {
		name, method, path, remote, body string
		header                           map[string]string
		want                             int
	}{
		{"heartbeat from remote without the key", "POST", api.PathHiveHeartbeat, remote, body, nil, 401},
		{"heartbeat from remote refuses the token", "POST", api.PathHiveHeartbeat, remote, body, token, 401},
		{"heartbeat from loopback", "POST", api.PathHiveHeartbeat, loop, `{"hive_id":`, nil, 400},
		{"SSE feed needs the token from remote", "GET", wsapi.FeedPath, remote, "", nil, 401},
		{"SSE feed with the token", "GET", wsapi.FeedPath, remote, "", token, 200},
		{"SSE feed from loopback", "GET", wsapi.FeedPath, loop, "", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A cancelled request: the SSE feed answers, then ends at once.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			req := httptest.NewRequestWithContext(ctx, tc.method, tc.path, strings.NewReader(tc.body))
			req.RemoteAddr, req.Host = tc.remote, "127.0.0.1:7833"
			req.Header.Set("Accept", "text/event-stream")
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			switch ct := rec.Header().Get("Content-Type"); {
			case rec.Code != tc.want:
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.want, rec.Body)
			case tc.method == "GET" && tc.want == 200 && ct != "text/event-stream":
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}
