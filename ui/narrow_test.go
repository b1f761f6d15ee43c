package ui_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/ui"
	"github.com/rbee/rbee/wsapi"
)

// gatedNode is a stand-in node whose /v1/cluster and feed answer nothing
// until the test opens the gate: the page's first paint comes before any
// data. Then hive gpu-a reports under full load: one worker with every
// slot busy, one busy, one whose GPU is busy outside rbee, one down.
type gatedNode struct {
	srv    *httptest.Server
	gate   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newGatedNode(t *testing.T) *gatedNode {
	t.Helper()
	n := &gatedNode{gate: make(chan struct{})}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	dash := ui.Handler()
	mux.Handle("GET /{$}", dash)
	mux.Handle("GET /ui/", dash)
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		if !n.wait(r.Context()) {
			return
		}
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

func (n *gatedNode) wait(ctx context.Context) bool {
	select {
	case <-n.gate:
		return true
	case <-ctx.Done():
	case <-n.ctx.Done():
	}
	return false
}

// fullLoad is gpu-a's report: workers with the states the queen gives
// them, and the leases that make them so.
func fullLoad(now time.Time) *wsapi.HiveTelemetry {
	ht := &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: "gpu-a", Timestamp: now.UTC()}
	for _, w := range []struct {
		stats  wsapi.ProcessStats
		leases int
	}{
		{wsapi.ProcessStats{PID: 101, Group: "sim", Instance: "41234", Model: ptr("llama-3.2-1b-instruct"), Slots: 2, GPUUtilPct: 92,
			VRAMMB: 5120, TotalVRAMMB: 24576, Simulated: true}, 2},
		{wsapi.ProcessStats{PID: 102, Group: "sim", Instance: "41235", Model: ptr("qwen2.5-0.5b-instruct"), Slots: 2, GPUUtilPct: 45,
			VRAMMB: 4608, TotalVRAMMB: 24576, Simulated: true}, 1},
		{wsapi.ProcessStats{PID: 103, Group: "ext", Instance: "11434", Model: ptr("mistral-7b"), Slots: 1, GPUUtilPct: 97,
			VRAMMB: 9000, TotalVRAMMB: 24576}, 0},
		{wsapi.ProcessStats{PID: 104, Group: "models", Instance: "40001", Model: ptr("phi-3-mini"), Slots: 2,
			Health: wsapi.HealthDown, HealthReason: "connection refused"}, 0},
	} {
		s := w.stats
		for k := range w.leases {
			ht.Leases = append(ht.Leases, wsapi.LeaseInfo{LeaseID: fmt.Sprintf("%s-%d", s.Instance, k), Worker: s.ID(), Model: *s.Model,
				Entry: "gpu-a", Since: now})
		}
		s.State, s.StateReason = scheduler.State(scheduler.Load{Fresh: true, Health: s.Health, HealthReason: s.HealthReason,
			Leases: w.leases, Slots: s.Slots, GPUUtilPct: s.GPUUtilPct}, scheduler.DefaultSaturatedPct)
		ht.Workers = append(ht.Workers, s)
	}
	return ht
}

func (n *gatedNode) serveFeed(w http.ResponseWriter, r *http.Request) {
	n.wg.Add(1)
	defer n.wg.Done()
	if !n.wait(r.Context()) {
		return
	}
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := conn.CloseRead(n.ctx)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		ev := &wsapi.QueenEvent{Type: wsapi.TypeQueen, Timestamp: now.UTC(), QueenID: "gpu-a", HiveIDs: []string{"gpu-a"},
			HivesOnline: 1, WorkersOnline: 4, WorkersAvailable: 1, HivesAvailable: 1,
			Queues: []wsapi.QueueStats{{Model: "llama-3.2-1b-instruct", Waiting: 3, Leases: 2, Slots: 2}}}
		for _, v := range []any{fullLoad(now), ev} {
			b, err := json.Marshal(v)
			if err != nil {
				panic(err)
			}
			if conn.Write(ctx, websocket.MessageText, b) != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// shownWorker is a worker row as the test reads it at some width.
type shownWorker struct {
	Key   string  `json:"key"`
	State string  `json:"state"`
	Badge string  `json:"badge"`
	Color string  `json:"color"`
	Name  string  `json:"name"`
	Title string  `json:"title"`
	Shown float64 `json:"shown"` // the name's width on screen, px
	Full  float64 `json:"full"`  // the width the whole name needs
	Left  float64 `json:"left"`
	Right float64 `json:"right"`
	VW    float64 `json:"vw"` // the viewport's width
	CW    float64 `json:"cw"` // the page's, less any scroll bar
	SW    float64 `json:"sw"` // the width its content takes
}

const readWorkersJS = `[...document.querySelectorAll('#hives [data-worker]')].map((r) => {
  const n = r.querySelector('[data-f=name]');
  const b = n.getBoundingClientRect();
  const st = r.querySelector('[data-f=state]');
  return { key: r.dataset.worker, state: r.dataset.state, badge: st.textContent, color: getComputedStyle(st).color,
    name: n.textContent, title: n.title || '', shown: b.width, full: n.scrollWidth, left: b.left, right: b.right,
    vw: innerWidth, cw: document.documentElement.clientWidth, sw: document.scrollingElement.scrollWidth };
})`

// TestDashboard_FirstPaintAndFullLoadAtNarrowWidths: before any data the
// queen tile says the page is connecting, not that no queen is elected (in
// red); a worker with every slot busy shows "full", not a fault, while a
// worker down keeps the fault's colour; and at phone and tablet widths
// every worker's name is on screen, readable, or whole on hover, on a
// page no wider than the screen.
func TestDashboard_FirstPaintAndFullLoadAtNarrowWidths(t *testing.T) {
	browser := startBrowser(t)
	n := newGatedNode(t)
	tb := openTab(t, browser, n.srv.URL+"/")

	// 1. Nothing has answered yet.
	type queenTile struct {
		V, S string
		Warn bool
	}
	var first queenTile
	testutil.Every(50*time.Millisecond).Eventually(t, 10*time.Second, "the page paints its tiles before any data", func() error {
		var err error
		first, err = chromedp.Run(tb.ctx, chromedp.Evaluate[queenTile](`(() => {
		  const t = document.getElementById('t-queen');
		  return { V: t.querySelector('[data-f=v]').textContent, S: t.querySelector('[data-f=s]').textContent, Warn: t.hasAttribute('data-warn') };
		})()`))
		if err != nil {
			return err
		}
		if first.S == "" {
			return errors.New("queen tile not rendered yet")
		}
		return nil
	})
	if !strings.HasPrefix(first.S, "connecting") || first.Warn || strings.Contains(first.S, "no queen") {
		t.Errorf("queen tile before any data = %+v, want a neutral \"connecting…\"", first)
	}
	close(n.gate)

	// 2. Full load, at three widths.
	for _, width := range []int64{1280, 1100, 900, 768, 721, 360} {
		if err := chromedp.Do(tb.ctx, chromedp.EmulateViewport(width, 800)); err != nil {
			t.Fatal(err)
		}
		var ws []shownWorker
		testutil.Every(100*time.Millisecond).Eventually(t, 15*time.Second, fmt.Sprintf("at %d px: states and names readable", width), func() error {
			var err error
			if ws, err = chromedp.Run(tb.ctx, chromedp.Evaluate[[]shownWorker](readWorkersJS)); err != nil {
				return err
			}
			if len(ws) != 4 {
				return fmt.Errorf("%d worker rows, want 4", len(ws))
			}
			if ws[0].VW != float64(width) {
				return fmt.Errorf("viewport %v px, want %d", ws[0].VW, width)
			}
			return nil
		})
		by := map[string]shownWorker{}
		for _, w := range ws {
			by[w.Key] = w
		}
		for key, want := range map[string]string{"sim/41234": "full", "sim/41235": "busy", "ext/11434": "saturated", "models/40001": "down"} {
			if w := by[key]; w.State != want || w.Badge != want {
				t.Errorf("at %d px: %s shows %q (data-state %q), want %q", width, key, w.Badge, w.State, want)
			}
		}
		if full, down := by["sim/41234"], by["models/40001"]; full.Color == down.Color {
			t.Errorf("at %d px: a full worker's badge has the colour of a worker down (%s)", width, full.Color)
		}
		if ws[0].SW > ws[0].CW+1 {
			t.Errorf("at %d px: the page is %.0f px wide, wider than the screen (%.0f px)", width, ws[0].SW, ws[0].CW)
		}
		for _, w := range ws {
			// On screen, at least 10 characters' worth of it or all of
			// it, and whole on hover when cut.
			if w.Left < 0 || w.Right > w.CW+0.5 {
				t.Errorf("at %d px: %s's name spans %.0f..%.0f px, off a %v px page", width, w.Key, w.Left, w.Right, w.CW)
			}
			if w.Shown < min(w.Full, 80) {
				t.Errorf("at %d px: %s's name shows %.0f of %.0f px", width, w.Key, w.Shown, w.Full)
			}
			if w.Full > w.Shown+1 && w.Title != w.Key {
				t.Errorf("at %d px: %s's name is cut (%.0f of %.0f px) and has no title with all of it (title %q)", width, w.Key, w.Shown, w.Full, w.Title)
			}
		}
		saveShot(t, fmt.Sprintf("full-load-%d.png", width), mustShot(t, tb))
	}
}

func mustShot(t *testing.T, tb *tab) []byte {
	t.Helper()
	buf, err := chromedp.Run(tb.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return buf
}
