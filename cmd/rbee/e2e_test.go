package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// feedEvent is the part of a feed message the tests look at.
type feedEvent struct {
	Type      string    `json:"type"`
	HiveID    string    `json:"hive_id"`
	Timestamp time.Time `json:"timestamp"`
	QueenID   string    `json:"queen_id"`
	// Migrations of a queen event (migrate_e2e_test.go).
	Migrations []wsapi.Migration `json:"migrations"`
	// err is set instead of the fields when the message did not parse.
	err error
}

// feedClient reads a node's /v1/heartbeats/stream in a goroutine. events is
// closed when the connection ends; err then says why.
type feedClient struct {
	node   string
	conn   *websocket.Conn
	events chan feedEvent
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// dialFeed connects to p's feed as a loopback caller (no token needed) and
// starts reading; the connection is closed when the test ends.
func (c *cluster) dialFeed(p *proc) *feedClient {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+p.httpAddr+wsapi.FeedPath, &websocket.DialOptions{HTTPClient: c.hc})
	if err != nil {
		c.tb.Fatalf("dial feed of %s: %v", p.name, err)
	}
	conn.SetReadLimit(wsapi.DefaultReadLimit)
	rctx, rcancel := context.WithCancel(context.Background())
	f := &feedClient{node: p.name, conn: conn, events: make(chan feedEvent, 4096), cancel: rcancel, done: make(chan struct{})}
	go f.read(rctx)
	c.tb.Cleanup(f.close)
	return f
}

func (f *feedClient) read(ctx context.Context) {
	defer close(f.done)
	defer close(f.events)
	for {
		_, data, err := f.conn.Read(ctx)
		if err != nil {
			f.err = err
			return
		}
		var ev feedEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			ev.err = fmt.Errorf("feed message %q: %w", data, err)
		}
		select {
		case f.events <- ev:
		case <-ctx.Done():
			f.err = ctx.Err()
			return
		}
	}
}

func (f *feedClient) close() {
	f.cancel()
	f.conn.CloseNow()
	<-f.done
}

// feedCond is one thing a test waits to see on a feed.
type feedCond struct {
	what  string
	match func(feedEvent) bool
}

// waitFeed reads f's events until each cond has matched one event (not
// necessarily in order), and fails tb after timeout or if the feed closes.
func waitFeed(tb testing.TB, f *feedClient, timeout time.Duration, conds ...feedCond) {
	tb.Helper()
	left := map[int]bool{}
	for i := range conds {
		left[i] = true
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var lastSeen []string
	for len(left) > 0 {
		select {
		case ev, ok := <-f.events:
			if !ok {
				tb.Fatalf("feed of %s closed before all conditions were seen: %v", f.node, f.err)
			}
			if ev.err != nil {
				tb.Fatal(ev.err)
			}
			lastSeen = append(lastSeen, fmt.Sprintf("%s hive=%s queen=%s ts=%s", ev.Type, ev.HiveID, ev.QueenID, ev.Timestamp.Format(time.StampMilli)))
			if len(lastSeen) > 10 {
				lastSeen = lastSeen[1:]
			}
			for i := range left {
				if conds[i].match(ev) {
					delete(left, i)
				}
			}
		case <-timer.C:
			var missing []string
			for i := range left {
				missing = append(missing, conds[i].what)
			}
			tb.Fatalf("feed of %s: within %s, never saw: %s\nlast events:\n%s", f.node, timeout, strings.Join(missing, "; "), strings.Join(lastSeen, "\n"))
		}
	}
}

func others(ps []*proc, not *proc) []*proc {
	var out []*proc
	for _, p := range ps {
		if p != not {
			out = append(out, p)
		}
	}
	return out
}

// TestE2E_QueenKilled: when the queen is SIGKILLed the survivors elect a new
// one, their hives report to it, and feed readers connected to a survivor
// keep receiving events, now from the new queen, without reconnecting.
func TestE2E_QueenKilled(t *testing.T) {
	c := newCluster(t)
	ps := c.startCluster(3)
	oldQueen := c.waitAgree(ps, 10*time.Second)
	queen := byName(t, ps, oldQueen)
	survivors := others(ps, queen)

	// A feed reader on each survivor. Whichever becomes queen serves its
	// own events afterwards; the other one keeps relaying, from the new
	// queen. Before the kill both relay the old queen's feed.
	feeds := make(map[string]*feedClient)
	for _, s := range survivors {
		f := c.dialFeed(s)
		feeds[s.name] = f
		waitFeed(t, f, 10*time.Second, feedCond{"hive_telemetry relayed from the old queen", func(ev feedEvent) bool {
			return ev.Type == wsapi.TypeHiveTelemetry
		}})
	}

	killedAt := time.Now()
	c.kill(queen)
	newQueen := c.waitNewQueen(ps, oldQueen, 15*time.Second)
	agreedAt := time.Now()
	t.Logf("queen %s killed; %s agreed as queen after %s", oldQueen, newQueen, agreedAt.Sub(killedAt).Round(time.Millisecond))
	if newQueen == oldQueen {
		t.Fatalf("new queen %q is the killed one", newQueen)
	}
	nq := byName(t, survivors, newQueen)
	other := others(survivors, nq)[0]

	// (b) The new queen hears from the other survivor's hive.
	testutil.Eventually(t, 15*time.Second, "new queen lists "+other.name+" online, seen after the kill", func() error {
		var v api.ClusterView
		if err := c.getJSON(nq.httpAddr, api.PathCluster, &v); err != nil {
			return err
		}
		if v.Queen != newQueen {
			return fmt.Errorf("/v1/cluster of %s names queen %q", nq.name, v.Queen)
		}
		for _, h := range v.Hives {
			if h.HiveID == other.name {
				if !h.Online || !h.LastSeen.After(killedAt) {
					return fmt.Errorf("%+v", h)
				}
				return nil
			}
		}
		return fmt.Errorf("hives: %+v", v.Hives)
	})

	// (c) Both feeds, opened before the kill, carry the new queen's events.
	for _, s := range survivors {
		waitFeed(t, feeds[s.name], 15*time.Second,
			feedCond{"hive_telemetry stamped after the new queen was agreed", func(ev feedEvent) bool {
				return ev.Type == wsapi.TypeHiveTelemetry && ev.Timestamp.After(agreedAt)
			}},
			feedCond{"queen event with queen_id " + newQueen, func(ev feedEvent) bool {
				return ev.Type == wsapi.TypeQueen && ev.QueenID == newQueen
			}},
		)
	}
}

// memberRow is one row of `rbee node members`.
type memberRow struct {
	name, status string
	queen        bool
}

// parseMembers reads the table `rbee node members` prints.
func parseMembers(tb testing.TB, out string) map[string]memberRow {
	tb.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || strings.Join(strings.Fields(lines[0]), " ") != "NAME ADDRESS HTTP ROLES STATUS QUEEN" {
		tb.Fatalf("members table has no header:\n%s", out)
	}
	rows := make(map[string]memberRow)
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 5 || len(f) > 6 {
			tb.Fatalf("members row %q: want 5 or 6 columns\n%s", l, out)
		}
		r := memberRow{name: f[0], status: f[4], queen: len(f) == 6 && f[5] == "*"}
		if len(f) == 6 && f[5] != "*" {
			tb.Fatalf("members row %q: queen column is %q", l, f[5])
		}
		rows[r.name] = r
	}
	return rows
}

// TestE2E_GracefulLeave: `rbee node leave` stops the queen cleanly (exit 0),
// the survivors elect a new queen, and `rbee node members` shows the leaver
// as left and marks the new queen.
func TestE2E_GracefulLeave(t *testing.T) {
	c := newCluster(t)
	ps := c.startCluster(3)
	oldQueen := c.waitAgree(ps, 10*time.Second)
	queen := byName(t, ps, oldQueen)
	survivors := others(ps, queen)

	out := c.rbee("node", "leave", "--http-addr", queen.httpAddr, "--cluster-key-file", c.keyFile)
	if !strings.Contains(out, "leaving") {
		t.Errorf("rbee node leave printed %q", out)
	}
	if code := queen.exitCode(t, 20*time.Second); code != 0 {
		t.Fatalf("the leaving queen exited with %d, want 0", code)
	}
	newQueen := c.waitNewQueen(ps, oldQueen, 10*time.Second)

	obs := survivors[0]
	testutil.Every(pollInterval).Eventually(t, 10*time.Second, obs.name+" lists "+oldQueen+" as left", func() error {
		ms, err := c.members(obs)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Name == oldQueen {
				if m.Status != "left" {
					return fmt.Errorf("%+v", m)
				}
				return nil
			}
		}
		return fmt.Errorf("%+v", ms)
	})

	out = c.rbee("node", "members", "--http-addr", obs.httpAddr)
	rows := parseMembers(t, out)
	if len(rows) != 3 {
		t.Errorf("members lists %d nodes, want 3:\n%s", len(rows), out)
	}
	if r := rows[oldQueen]; r.status != "left" || r.queen {
		t.Errorf("leaver %s: %+v, want status left and not queen:\n%s", oldQueen, r, out)
	}
	if r := rows[newQueen]; r.status != "alive" || !r.queen {
		t.Errorf("new queen %s: %+v, want alive and marked *:\n%s", newQueen, r, out)
	}
	for _, s := range survivors {
		if r := rows[s.name]; r.status != "alive" || r.queen != (s.name == newQueen) {
			t.Errorf("survivor %s: %+v:\n%s", s.name, r, out)
		}
	}
}

// TestE2E_JoinCommand: two nodes that started alone become one cluster with
// `rbee node join`, and the older node's claim to the seat wins.
func TestE2E_JoinCommand(t *testing.T) {
	c := newCluster(t)
	a := c.start(nodeSpec{name: "a"})[0]
	b := c.start(nodeSpec{name: "b"})[0]
	if q := c.waitAgree([]*proc{a}, 10*time.Second); q != "a" {
		t.Fatalf("a alone names queen %q", q)
	}
	if q := c.waitAgree([]*proc{b}, 10*time.Second); q != "b" {
		t.Fatalf("b alone names queen %q", q)
	}

	// The flag after the address, as scripts write it (consul join style):
	// the request must go to b, not to a node on the default port.
	out := c.rbee("node", "join", a.gossipAddr, "--http-addr", b.httpAddr)
	if !strings.Contains(out, "joined: 1 node(s) answered") {
		t.Errorf("rbee node join printed %q", out)
	}
	both := []*proc{a, b}
	// Both held the seat; the oldest claimant keeps it.
	if q := c.waitConverged(both, 10*time.Second); q != "a" {
		t.Errorf("after the join the queen is %q, want a (the older node)", q)
	}
	for _, p := range both {
		out := c.rbee("node", "members", "--http-addr", p.httpAddr, "--cluster-key-file", c.keyFile)
		rows := parseMembers(t, out)
		if len(rows) != 2 || rows["a"].status != "alive" || rows["b"].status != "alive" {
			t.Errorf("members on %s: want a and b alive:\n%s", p.name, out)
		}
		if !rows["a"].queen || rows["b"].queen {
			t.Errorf("members on %s: want a marked queen:\n%s", p.name, out)
		}
	}
}

// TestE2E_WrongKeyRefused: a node with another cluster's key cannot join, and
// a hive session with the wrong key is refused at the handshake.
func TestE2E_WrongKeyRefused(t *testing.T) {
	c := newCluster(t)
	ps := c.startCluster(2)
	queenName := c.waitAgree(ps, 10*time.Second)
	queen := byName(t, ps, queenName)

	wrongFile, wrongKey := c.keygen("wrong-key")
	intruder := c.start(nodeSpec{name: "intruder", join: ps[0].gossipAddr, keyFile: wrongFile})[0]

	// Proving a negative needs a bounded wait: the intruder retries its
	// join after 200, 400 and 800 ms, and a node with the right key joins
	// within milliseconds of its first attempt, so 2 s (ten probe
	// intervals, four join attempts) with the intruder absent throughout
	// shows that the key is what keeps it out.
	testutil.Every(50*time.Millisecond).Consistently(t, 2*time.Second, "the intruder stays out", func() error {
		for _, p := range append(c.live(ps), intruder) {
			ms, err := c.members(p)
			if err != nil {
				return fmt.Errorf("members of %s: %w", p.name, err)
			}
			for _, m := range ms {
				if (p == intruder) != (m.Name == "intruder") {
					return fmt.Errorf("%s lists %s (%s): a node with the wrong key got in", p.name, m.Name, m.Status)
				}
			}
		}
		return nil
	})
	if !strings.Contains(intruder.log(), `msg="join failed; retrying in the background"`) {
		t.Errorf("intruder's log does not say its join failed:\n%s", intruder.log())
	}

	url := "ws://" + queen.httpAddr + wsapi.SessionPath
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The same dial with the right key works, so the refusal below is
	// about the key and nothing else.
	s, err := wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Key: c.key, Name: "probe", Version: node.Version, HTTPClient: c.hc})
	if err != nil {
		t.Fatalf("hive session with the right key: %v", err)
	}
	_ = s.Close(websocket.StatusNormalClosure, "")

	s, err = wsapi.DialHive(ctx, url, &wsapi.SessionOptions{Key: wrongKey, Name: "intruder-hive", Version: node.Version, HTTPClient: c.hc})
	if err == nil {
		s.CloseNow()
		t.Fatal("hive session with the wrong key was accepted")
	}
	if code := websocket.CloseStatus(err); code != wsapi.CloseAuth || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("hive session with the wrong key: close status %v, err %v; want %v and an authentication error", code, err, wsapi.CloseAuth)
	}
	var v api.ClusterView
	if err := c.getJSON(queen.httpAddr, api.PathCluster, &v); err != nil {
		t.Fatal(err)
	}
	for _, h := range v.Hives {
		if h.HiveID == "intruder-hive" || h.HiveID == "intruder" {
			t.Errorf("queen lists hive %s", h.HiveID)
		}
	}
}

// TestE2E_NoKeyBeyondLoopbackNeedsInsecure: without a key a node refuses to
// listen beyond loopback unless told --insecure.
func TestE2E_NoKeyBeyondLoopbackNeedsInsecure(t *testing.T) {
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	gossipPort, httpPort := strconv.Itoa(ports[0]), strconv.Itoa(ports[1])
	for _, tc := range []struct {
		name         string
		gossip, http string
	}{
		{"http on every interface", net.JoinHostPort("127.0.0.1", gossipPort), net.JoinHostPort("0.0.0.0", httpPort)},
		{"gossip on every interface", net.JoinHostPort("0.0.0.0", gossipPort), net.JoinHostPort("127.0.0.1", httpPort)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := runRbee("node", "run", "--name", "open", "--gossip-addr", tc.gossip, "--http-addr", tc.http)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
				t.Fatalf("rbee node run without a key on %s/%s: %v, want a non-zero exit\nstderr:\n%s", tc.gossip, tc.http, err, stderr)
			}
			if !strings.Contains(stderr, "--insecure") {
				t.Errorf("stderr does not mention --insecure:\n%s", stderr)
			}
		})
	}
}
