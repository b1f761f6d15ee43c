package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/ui"
	"github.com/rbee/rbee/wsapi"
)

// migrationNode is a stand-in queen whose events list migrations: the first
// events one stream moved, the later ones also one lost. Every event repeats
// the whole list, as a queen's do.
type migrationNode struct {
	srv    *httptest.Server
	sent   atomic.Int64 // queen events sent
	list   [2]wsapi.Migration
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newMigrationNode(t *testing.T) *migrationNode {
	t.Helper()
	at := time.Now().Add(-time.Second).UTC()
	n := &migrationNode{list: [2]wsapi.Migration{
		{Type: wsapi.TypeMigration, At: at, Entry: "gpu-a", Model: "qwen", From: "gpu-a/llm/8080", To: "gpu-b/llm/8081",
			Tokens: 120, PauseMS: 400, Result: wsapi.MigrationContinued},
		{Type: wsapi.TypeMigration, At: at.Add(time.Millisecond), Entry: "gpu-a", Model: "qwen", From: "gpu-b/llm/8081",
			Tokens: 37, Result: wsapi.MigrationFailed, Reason: "no other worker serves qwen"},
	}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	dash := ui.Handler()
	mux.Handle("GET /{$}", dash)
	mux.Handle("GET /ui/", dash)
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		v := api.ClusterView{Node: "gpu-a", Queen: "gpu-a",
			Members: []api.MemberView{{Name: "gpu-a", HTTPAddr: r.Host, Roles: []string{"queen", "hive"}, Status: "alive", Queen: true}},
			Hives:   []api.HiveView{}}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	})
	mux.HandleFunc("GET "+wsapi.FeedPath, n.serveFeed)
	n.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		n.cancel()
		n.srv.Close()
		n.wg.Wait()
	})
	return n
}

// serveFeed sends a queen event every 100 ms: the first five list the moved
// stream, the rest the lost one too.
func (n *migrationNode) serveFeed(w http.ResponseWriter, r *http.Request) {
	n.wg.Add(1)
	defer n.wg.Done()
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := conn.CloseRead(n.ctx)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		listed := n.list[:1]
		if n.sent.Load() >= 5 {
			listed = n.list[:]
		}
		b, err := json.Marshal(&wsapi.QueenEvent{Type: wsapi.TypeQueen, Timestamp: time.Now().UTC(), QueenID: "gpu-a",
			HiveIDs: []string{}, WorkerIDs: []string{}, Migrations: listed})
		if err != nil {
			panic(err)
		}
		if conn.Write(ctx, websocket.MessageText, b) != nil {
			return
		}
		n.sent.Add(1)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// TestDashboard_MigrationsLoggedOnce: each migration the queen lists shows
// in the event list once, with its level, though every queen event lists it
// again; those in the first event after the page loads included.
func TestDashboard_MigrationsLoggedOnce(t *testing.T) {
	browser := startBrowser(t)
	n := newMigrationNode(t)
	tb := openTab(t, browser, n.srv.URL+"/")
	const (
		moved = "stream moved: qwen from gpu-a/llm/8080 to gpu-b/llm/8081 after 120 tokens, paused 0.4 s"
		lost  = "stream lost: qwen on gpu-b/llm/8081 after 37 tokens: no other worker serves qwen"
	)
	count := func(p page, text string) int {
		c := 0
		for _, e := range p.Events {
			if strings.HasSuffix(e, text) {
				c++
			}
		}
		return c
	}
	waitPage(t, tb, 20*time.Second, "both migrations in the event list", func(p page) error {
		if count(p, moved) == 0 || count(p, lost) == 0 {
			return fmt.Errorf("events %q lack %q or %q", p.Events, moved, lost)
		}
		return nil
	})
	// Ten more events repeat both.
	for seen := n.sent.Load(); n.sent.Load() < seen+10; {
		time.Sleep(50 * time.Millisecond)
	}
	p := waitPage(t, tb, 5*time.Second, "the page", func(page) error { return nil })
	if c, d := count(p, moved), count(p, lost); c != 1 || d != 1 {
		t.Errorf("moved stream logged %d times, lost one %d times, want once each: %q", c, d, p.Events)
	}
	levels, err := eventLevels(tb)
	if err != nil {
		t.Fatal(err)
	}
	if levels[moved] != "info" || levels[lost] != "warn" {
		t.Errorf("levels %q: want the moved stream info, the lost one warn", levels)
	}
}

// eventLevels maps each event's text to its level.
func eventLevels(tb *tab) (map[string]string, error) {
	return chromedp.Run(tb.ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll('#events li')].map(
  (li) => [li.querySelector('span').textContent, li.dataset.level]))`))
}
