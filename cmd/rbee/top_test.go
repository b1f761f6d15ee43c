package main

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/termview"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/wsapi"
)

// TestTopSource_FeedAndReconnect runs the connection against a fake node:
// snapshot, feed, messages with the token, then the node going away.
func TestTopSource_FeedAndReconnect(t *testing.T) {
	_, data := loadClusterFixture(t)
	key, err := wsapi.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	hub := wsapi.NewHub(0)
	// The snapshot names only loopback members: the source tries them
	// when its node fails, and tests dial nothing else.
	dead := closedPort(t)
	data = []byte(strings.NewReplacer("10.0.0.10:7833", dead, "10.0.0.11:7833", dead).Replace(string(data)))
	srv := fakeNode(t, data, key, hub)
	addr := srv.addr
	src := &topSource{addr: addr, key: key, retry: 10 * time.Millisecond, snapshotEvery: time.Hour}

	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan termview.TopUpdate, 16)
	var wg sync.WaitGroup
	wg.Go(func() { src.run(ctx, updates) })
	defer wg.Wait()
	defer cancel()

	next := func(what string) termview.TopUpdate {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(10 * time.Second):
			t.Fatalf("no update: want %s", what)
			return termview.TopUpdate{}
		}
	}
	if u := next("snapshot"); u.View == nil || u.View.Queen != "n0" {
		t.Fatalf("first update %+v, want the snapshot", u)
	}
	if u := next("live"); !u.Live {
		t.Fatalf("second update %+v, want live", u)
	}
	// The feed subscribes right after the upgrade; publish once it has.
	for n, changed := hub.Readers(); n == 0; n, changed = hub.Readers() {
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatal("the feed has no reader")
		}
	}
	for _, m := range []any{
		&wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: "h1", Timestamp: statusNow, Workers: []wsapi.ProcessStats{{Group: "g", Instance: "1"}}},
		map[string]string{"type": "something_newer"},
		&wsapi.QueenEvent{Type: wsapi.TypeQueen, QueenID: "n0", Timestamp: statusNow, WorkerIDs: []string{}, HiveIDs: []string{}},
	} {
		b, err := wsapi.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		hub.Publish(b)
	}
	if u := next("telemetry"); u.Msg == nil || u.Msg.(*wsapi.HiveTelemetry).HiveID != "h1" {
		t.Fatalf("update %+v, want h1's telemetry", u)
	}
	if u := next("queen event"); u.Msg == nil || u.Msg.(*wsapi.QueenEvent).QueenID != "n0" {
		t.Fatalf("update %+v, want the queen event (the unknown message skipped)", u)
	}

	srv.Close()
	if u := next("an error"); u.Err == nil {
		t.Fatalf("update %+v after the node went away, want an error", u)
	}
	if u := next("a second error"); u.Err == nil || !strings.Contains(u.Err.Error(), "reach node at") {
		t.Fatalf("update %+v, want a retry that cannot reach the node", u)
	}
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestTopSource_MovesToAnotherMember: when the node top reads dies, it reads
// another member the last snapshot showed alive.
func TestTopSource_MovesToAnotherMember(t *testing.T) {
	_, data := loadClusterFixture(t)
	var key wsapi.Key
	b := fakeNode(t, data, wsapi.Key{}, nil)
	bAddr := strings.TrimPrefix(b.URL, "http://")
	// a's snapshot lists b alive; b's own snapshot is the fixture's.
	aData := []byte(strings.NewReplacer("10.0.0.10:7833", "127.0.0.1:1", "10.0.0.11:7833", bAddr, `"node": "n1"`, `"node": "a"`).Replace(string(data)))
	a := fakeNode(t, aData, wsapi.Key{}, nil)
	src := &topSource{addr: strings.TrimPrefix(a.URL, "http://"), key: key, retry: 10 * time.Millisecond, snapshotEvery: time.Hour}

	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan termview.TopUpdate, 16)
	var wg sync.WaitGroup
	wg.Go(func() { src.run(ctx, updates) })
	defer wg.Wait()
	defer cancel()
	first := true
	for {
		var u termview.TopUpdate
		select {
		case u = <-updates:
		case <-time.After(10 * time.Second):
			t.Fatal("top never read another member")
		}
		if u.View == nil {
			continue
		}
		if first {
			if u.View.Node != "a" {
				t.Fatalf("first snapshot from %q, want a", u.View.Node)
			}
			first = false
			a.Close() // a dies: the feed breaks, a cannot be reached
			continue
		}
		if u.View.Node == "n1" {
			return // b answered
		}
	}
}

func TestTopCommand_NotATerminalPrintsOneFrame(t *testing.T) {
	v, data := loadClusterFixture(t)
	srv := fakeNode(t, data, wsapi.Key{}, nil)
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, args := range [][]string{{"top"}, {"top", "--once"}} {
		out, err := runApp(append(args, "--http-addr", addr)...)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if !strings.HasPrefix(lines[0], "rbee top  "+addr+"  ") {
			t.Errorf("rbee %s: first line %q", strings.Join(args, " "), lines[0])
		}
		want := termview.StatusLines(v, time.Now(), termview.StatusOptions{})
		if got := strings.Join(lines[1:], "\n"); dropAgo(got) != dropAgo(strings.Join(want, "\n")) {
			t.Errorf("rbee %s printed\n%s\nwant the title, then\n%s", strings.Join(args, " "), out, strings.Join(want, "\n"))
		}
	}
}

// TestTopOnce_ModelLifecycle: `rbee top --once` takes the lifecycle from the
// /v1/cluster snapshot, as `rbee status` does.
func TestTopOnce_ModelLifecycle(t *testing.T) {
	srv := fakeNode(t, lifecycleFixture(t), wsapi.Key{}, nil)
	out, err := runApp("top", "--once", "--http-addr", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	for _, w := range [][]string{{"models/30002", "loading"}, {"catalog: 5 models on 2 hives, 2 failing or unavailable"},
		{"mistral-7b", "failed 2x"}, {"gpu-b", "0.0/24.0 GiB*"}} {
		if !testutil.HasLineWith(lines, w) {
			t.Errorf("rbee top --once: no line with all of %q in\n%s", w, out)
		}
	}
}
