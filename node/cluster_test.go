package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// fakeCollector is a test double: a Collector backed by a function.
type fakeCollector struct {
	fn func() ([]wsapi.ProcessStats, error)
}

func (f fakeCollector) Collect(context.Context) ([]wsapi.ProcessStats, error) { return f.fn() }

func staticWorkers(ws ...wsapi.ProcessStats) hive.Collector {
	return fakeCollector{fn: func() ([]wsapi.ProcessStats, error) { return ws, nil }}
}

func ptr[T any](v T) *T { return &v }

func agreedQueen(nodes ...*nodetest.Node) (string, error) {
	var first string
	for i, n := range nodes {
		q, ok := n.Queen()
		if !ok {
			return "", fmt.Errorf("%s has no queen", n.Name())
		}
		if i == 0 {
			first = q.Name
		} else if q.Name != first {
			return "", fmt.Errorf("%s says %s, %s says %s", nodes[0].Name(), first, n.Name(), q.Name)
		}
	}
	return first, nil
}

func byName(nodes []*nodetest.Node, name string) *nodetest.Node {
	for _, n := range nodes {
		if n.Name() == name {
			return n
		}
	}
	return nil
}

func mustKey(t *testing.T) wsapi.Key {
	t.Helper()
	k, err := wsapi.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// feedClient reads a node's feed into a channel of decoded events.
type feedClient struct {
	events chan any
	cancel context.CancelFunc
	done   chan struct{}
}

func dialFeed(t *testing.T, httpAddr string) *feedClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, _, err := websocket.Dial(ctx, "ws://"+httpAddr+wsapi.FeedPath, nil)
	if err != nil {
		cancel()
		t.Fatalf("dial feed: %v", err)
	}
	conn.SetReadLimit(wsapi.DefaultReadLimit)
	fc := &feedClient{events: make(chan any, 4096), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(fc.done)
		defer conn.CloseNow()
		for {
			_, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			ev, err := wsapi.Decode(data)
			if err != nil {
				t.Errorf("feed sent an undecodable event: %v: %s", err, data)
				return
			}
			select {
			case fc.events <- ev:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-fc.done
	})
	return fc
}

// waitEvent returns the first feed event for which match returns true.
func (fc *feedClient) waitEvent(t *testing.T, within time.Duration, what string, match func(any) bool) any {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case ev := <-fc.events:
			if match(ev) {
				return ev
			}
		case <-fc.done:
			t.Fatalf("feed closed while waiting for %s", what)
		case <-timer.C:
			t.Fatalf("no %s on the feed within %v", what, within)
		}
	}
}

func TestCluster_ThreeNodesAgreeAndTelemetryReachesQueenAndFeed(t *testing.T) {
	key := mustKey(t)
	gpuWorker := wsapi.ProcessStats{PID: 4242, Group: "llm", Instance: "8080", CPUPct: 12.5, RSSMB: 2048,
		GPUUtilPct: 97, VRAMMB: 4096, TotalVRAMMB: 24576, UptimeS: 60, Model: ptr("llama-3.2-1b")}
	idleWorker := wsapi.ProcessStats{PID: 4243, Group: "llm", Instance: "8081", VRAMMB: 100, TotalVRAMMB: 24576}

	a := nodetest.Start(t, "a", nodetest.WithKey(key))
	b := nodetest.Start(t, "b", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()), nodetest.WithCollector(staticWorkers(gpuWorker, idleWorker)))
	c := nodetest.Start(t, "c", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()))
	nodes := []*nodetest.Node{a, b, c}

	var queen string
	testutil.Eventually(t, 10*time.Second, "all three agree on a queen", func() (err error) {
		queen, err = agreedQueen(nodes...)
		return err
	})
	if queen != "a" {
		t.Errorf("queen = %s, want a (the oldest node with equal priority)", queen)
	}
	q := byName(nodes, queen)

	testutil.Eventually(t, 10*time.Second, "queen's registry has all three hives online", func() error {
		hives := q.Registry().Hives(time.Now())
		online := 0
		for _, h := range hives {
			if h.Online {
				online++
			}
		}
		if online != 3 {
			return fmt.Errorf("%d hives online: %+v", online, hives)
		}
		return nil
	})
	for _, h := range q.Registry().Hives(time.Now()) {
		if h.HiveID != "b" {
			if len(h.Workers) != 0 {
				t.Errorf("hive %s reports %d workers, want 0", h.HiveID, len(h.Workers))
			}
			continue
		}
		if len(h.Workers) != 2 || h.Workers[0].PID != 4242 || *h.Workers[0].Model != "llama-3.2-1b" || h.Workers[0].VRAMMB != 4096 {
			t.Errorf("hive b workers = %+v, want the collector's two", h.Workers)
		}
	}

	// A feed reader on a node that is not queen sees the queen's events.
	var follower *nodetest.Node
	for _, n := range nodes {
		if n.Name() != queen {
			follower = n
			break
		}
	}
	feed := dialFeed(t, follower.HTTPAddr())
	ev := feed.waitEvent(t, 10*time.Second, "hive_telemetry from b", func(ev any) bool {
		ht, ok := ev.(*wsapi.HiveTelemetry)
		return ok && ht.HiveID == "b"
	}).(*wsapi.HiveTelemetry)
	if len(ev.Workers) != 2 || ev.Workers[0].GPUUtilPct != 97 || ev.Workers[1].Model != nil {
		t.Errorf("relayed telemetry = %+v", ev.Workers)
	}
	qe := feed.waitEvent(t, 10*time.Second, "queen event counting b's workers", func(ev any) bool {
		qe, ok := ev.(*wsapi.QueenEvent)
		return ok && qe.HivesOnline == 3
	}).(*wsapi.QueenEvent)
	if qe.WorkersOnline != 2 || qe.WorkersAvailable != 1 || qe.HivesAvailable != 1 || qe.QueenID != queen {
		t.Errorf("queen event = %+v, want 2 workers online, 1 available (the other's GPU is busy), 1 hive available, queen %s", qe, queen)
	}
	wantIDs := []string{"b/llm/8080", "b/llm/8081"}
	if fmt.Sprint(qe.WorkerIDs) != fmt.Sprint(wantIDs) {
		t.Errorf("worker_ids = %v, want %v", qe.WorkerIDs, wantIDs)
	}

	// /v1/cluster on a follower shows the queen's hives.
	client := api.NewClient(follower.HTTPAddr(), wsapi.Key{})
	defer client.Close()
	cl, err := client.Cluster(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if cl.Queen != queen || len(cl.Members) != 3 || len(cl.Hives) != 3 || cl.HivesError != "" {
		t.Errorf("cluster from follower = queen %s, %d members, %d hives, err %q", cl.Queen, len(cl.Members), len(cl.Hives), cl.HivesError)
	}
	// A node that asks a follower for the queen's view (their views of
	// who is queen differ for a moment) gets an answer, not a loop of
	// nodes asking each other.
	req := httptest.NewRequest(http.MethodGet, api.PathCluster, nil)
	req.RemoteAddr, req.Host = "127.0.0.1:40000", "127.0.0.1:7833"
	req.Header.Set("X-Rbee-Asked-By", queen)
	rec := httptest.NewRecorder()
	follower.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "asked as queen") {
		t.Errorf("follower asked as queen: %d %s", rec.Code, rec.Body)
	}
}

func TestCluster_QueenLeavesFeedFollowsNewQueen(t *testing.T) {
	key := mustKey(t)
	a := nodetest.Start(t, "a", nodetest.WithKey(key))
	b := nodetest.Start(t, "b", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()))
	c := nodetest.Start(t, "c", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "agree on a", func() error {
		q, err := agreedQueen(a, b, c)
		if err == nil && q != "a" {
			err = fmt.Errorf("queen %s", q)
		}
		return err
	})
	feed := dialFeed(t, c.HTTPAddr())
	feed.waitEvent(t, 10*time.Second, "a queen event from a", func(ev any) bool {
		qe, ok := ev.(*wsapi.QueenEvent)
		return ok && qe.QueenID == "a"
	})

	if err := a.Stop(); err != nil {
		t.Fatalf("queen a stopped with %v", err)
	}
	var queen string
	testutil.Eventually(t, 5*time.Second, "survivors agree on a new queen", func() (err error) {
		queen, err = agreedQueen(b, c)
		if err == nil && queen == "a" {
			err = errors.New("still a")
		}
		return err
	})
	// The same feed connection, never redialled, now carries the new
	// queen's events, and both survivors' telemetry.
	feed.waitEvent(t, 10*time.Second, "queen event from the new queen with both survivors online", func(ev any) bool {
		qe, ok := ev.(*wsapi.QueenEvent)
		return ok && qe.QueenID == queen && qe.HivesOnline == 2
	})
	for _, m := range b.Members() {
		if m.Name == "a" && m.Status != gossip.StatusLeft {
			t.Errorf("a's status on b = %s, want left", m.Status)
		}
	}
}

func TestQueen_RefusesBadSessionsAndKeepsServingOthers(t *testing.T) {
	key := mustKey(t)
	a := nodetest.Start(t, "a", nodetest.WithKey(key), nodetest.WithRoles(gossip.RoleQueen))
	nodetest.Start(t, "b", nodetest.WithKey(key), nodetest.WithJoin(a.GossipAddr()), nodetest.WithRoles(gossip.RoleHive))
	testutil.Eventually(t, 10*time.Second, "b reports to a", func() error {
		for _, h := range a.Registry().Hives(time.Now()) {
			if h.HiveID == "b" && h.Online {
				return nil
			}
		}
		return errors.New("b not online")
	})
	url := "ws://" + a.HTTPAddr() + wsapi.SessionPath
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("wrong key", func(t *testing.T) {
		_, err := wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Key: mustKey(t), Name: "intruder", Version: node.Version})
		if err == nil || websocket.CloseStatus(err) != wsapi.CloseAuth {
			t.Fatalf("dial with wrong key: err = %v, want close %v", err, wsapi.CloseAuth)
		}
	})
	t.Run("no key", func(t *testing.T) {
		_, err := wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Name: "intruder", Version: node.Version})
		if err == nil || websocket.CloseStatus(err) != wsapi.CloseAuth {
			t.Fatalf("dial without key: err = %v, want close %v", err, wsapi.CloseAuth)
		}
	})
	for _, tc := range []struct {
		name string
		msg  string
		code websocket.StatusCode
	}{
		{"malformed JSON", `{"type":"hive_telemetry",`, wsapi.CloseMalformed},
		// A type this queen does not know is skipped (a later revision
		// may send one), so the spoof after it is what closes the session.
		{"unknown type, then a spoofed hive id", `[{"type":"launch_missiles"},{"type":"hive_telemetry","hive_id":"b","timestamp":"2025-10-30T20:15:30Z","workers":[]}]`, wsapi.CloseMalformed},
		{"wrong field type", `{"type":"hive_telemetry","hive_id":"evil","timestamp":"2025-10-30T20:15:30Z","workers":[{"pid":"one"}]}`, wsapi.CloseMalformed},
		{"spoofed hive id", `{"type":"hive_telemetry","hive_id":"b","timestamp":"2025-10-30T20:15:30Z","workers":[]}`, wsapi.CloseMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Key: key, Name: "evil", Version: node.Version})
			if err != nil {
				t.Fatal(err)
			}
			defer s.CloseNow()
			if err := s.WriteRaw(ctx, []byte(tc.msg)); err != nil {
				t.Fatal(err)
			}
			_, err = s.Read(ctx)
			if got := websocket.CloseStatus(err); got != tc.code {
				t.Fatalf("close code = %v (%v), want %v", got, err, tc.code)
			}
		})
	}
	t.Run("oversized frame", func(t *testing.T) {
		s, err := wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Key: key, Name: "big", Version: node.Version})
		if err != nil {
			t.Fatal(err)
		}
		defer s.CloseNow()
		big := make([]byte, wsapi.DefaultReadLimit+1)
		for i := range big {
			big[i] = ' '
		}
		_ = s.WriteRaw(ctx, big) // the queen may close before it is all written
		_, err = s.Read(ctx)
		if got := websocket.CloseStatus(err); got != wsapi.CloseTooBig {
			t.Fatalf("close code = %v (%v), want %v", got, err, wsapi.CloseTooBig)
		}
	})

	// The node is still up and b's session was never disturbed: its
	// telemetry keeps arriving after all of the above.
	before := time.Now()
	testutil.Eventually(t, 5*time.Second, "b still reporting", func() error {
		for _, h := range a.Registry().Hives(time.Now()) {
			if h.HiveID == "b" && h.LastSeen.After(before) {
				return nil
			}
		}
		return errors.New("no report from b since the bad sessions")
	})
	for _, h := range a.Registry().Hives(time.Now()) {
		if h.HiveID == "evil" || h.HiveID == "big" || h.HiveID == "intruder" {
			t.Errorf("bad session %s made it into the registry", h.HiveID)
		}
	}
}

func TestNode_NotQueenRefusesSessionAndNamesQueen(t *testing.T) {
	a := nodetest.Start(t, "a")
	b := nodetest.Start(t, "b", nodetest.WithJoin(a.GossipAddr()))
	testutil.Eventually(t, 10*time.Second, "agree", func() error { _, err := agreedQueen(a, b); return err })
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	_, err := wsapi.DialHive(context.Background(), "ws://"+b.HTTPAddr()+wsapi.SessionPath, &wsapi.SessionOptions{Name: "x", Version: node.Version, HTTPClient: hc})
	var nq *wsapi.NotQueenError
	if !errors.As(err, &nq) {
		t.Fatalf("err = %v, want NotQueenError", err)
	}
	if nq.Queen != "a" || nq.QueenHTTP != a.HTTPAddr() {
		t.Errorf("refusal names %s at %s, want a at %s", nq.Queen, nq.QueenHTTP, a.HTTPAddr())
	}
}

func TestNode_DuplicateHiveSessionReplacesOld(t *testing.T) {
	key := mustKey(t)
	a := nodetest.Start(t, "a", nodetest.WithKey(key), nodetest.WithRoles(gossip.RoleQueen))
	testutil.Eventually(t, 5*time.Second, "a is queen", func() error { _, err := agreedQueen(a); return err })
	url := "ws://" + a.HTTPAddr() + wsapi.SessionPath
	opts := &wsapi.SessionOptions{Key: key, Name: "h", Version: node.Version}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old, err := wsapi.DialHive(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer old.CloseNow()
	fresh, err := wsapi.DialHive(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.CloseNow()
	_, err = old.Read(ctx)
	if got := websocket.CloseStatus(err); got != wsapi.CloseReplaced {
		t.Fatalf("old session closed with %v (%v), want %v", got, err, wsapi.CloseReplaced)
	}
	msg := wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: "h", Timestamp: time.Now().UTC(), Workers: []wsapi.ProcessStats{}}
	if err := fresh.Write(ctx, msg); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "fresh session reports", func() error {
		for _, h := range a.Registry().Hives(time.Now()) {
			if h.HiveID == "h" && h.Online {
				return nil
			}
		}
		return errors.New("h not online")
	})
}

func TestNode_ClusterJSONShape(t *testing.T) {
	a := nodetest.Start(t, "a")
	testutil.Eventually(t, 5*time.Second, "a is queen", func() error { _, err := agreedQueen(a); return err })
	resp, err := httpGet("http://" + a.HTTPAddr() + api.PathCluster)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(resp, &doc); err != nil {
		t.Fatalf("decode /v1/cluster: %v: %s", err, resp)
	}
	for _, k := range []string{"node", "queen", "members", "hives"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("/v1/cluster lacks %q: %s", k, resp)
		}
	}
	var members []map[string]any
	if err := json.Unmarshal(doc["members"], &members); err != nil || len(members) != 1 {
		t.Fatalf("members = %s (%v)", doc["members"], err)
	}
	for _, k := range []string{"name", "gossip_addr", "http_addr", "roles", "status"} {
		if _, ok := members[0][k]; !ok {
			t.Errorf("member lacks %q: %v", k, members[0])
		}
	}
}
