package ui_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// workerList is a hive.Collector that reports a fixed list of workers, which
// the test may replace.
type workerList struct {
	ws atomic.Pointer[[]wsapi.ProcessStats]
}

func newWorkerList(ws ...wsapi.ProcessStats) *workerList {
	l := &workerList{}
	l.set(ws...)
	return l
}

func (l *workerList) set(ws ...wsapi.ProcessStats) { l.ws.Store(&ws) }

func (l *workerList) Collect(context.Context) ([]wsapi.ProcessStats, error) { return *l.ws.Load(), nil }

var _ hive.Collector = (*workerList)(nil)

func ptr[T any](v T) *T { return &v }

func startClusterNode(t *testing.T, name string, priority int, roles []string, workers *workerList, join ...string) *nodetest.Node {
	t.Helper()
	cfg := nodetest.Config(t, name)
	cfg.Roles = roles
	cfg.QueenPriority = priority
	cfg.Collector = workers
	cfg.Join = join
	// Faster than production so the test is quick; the dashboard's own
	// thresholds (stale after 2.5 s, offline after 5 s or when the queen
	// drops a hive) are wall-clock and unchanged.
	cfg.TelemetryInterval = 200 * time.Millisecond
	cfg.QueenEventInterval = 250 * time.Millisecond
	// The queen keeps a silent hive in its count for 4 s, so that the
	// page shows it stale (after 2.5 s) before it is offline.
	cfg.HiveTTL = 4 * time.Second
	return nodetest.Run(t, cfg)
}

func queenOf(nodes ...*nodetest.Node) (string, error) {
	var first string
	for i, n := range nodes {
		q, ok := n.Queen()
		switch {
		case !ok:
			return "", fmt.Errorf("%s has no queen", n.Name())
		case i == 0:
			first = q.Name
		case q.Name != first:
			return "", fmt.Errorf("%s says %s, %s says %s", nodes[0].Name(), first, n.Name(), q.Name)
		}
	}
	return first, nil
}

// The workers the hives report, and what the dashboard must show for them
// (format.js's spellings).
var (
	alphaLLM = wsapi.ProcessStats{PID: 4242, Group: "llm", Instance: "8080", CPUPct: 12.5, RSSMB: 7680,
		IOReadMBs: 1.5, IOWriteMBs: 0.2, UptimeS: 3723, GPUUtilPct: 97, VRAMMB: 20480, TotalVRAMMB: 24576,
		Model: ptr("llama-3.1-8b-instruct"), Slots: 4}
	bravoSim = wsapi.ProcessStats{PID: 5150, Group: "llm", Instance: "8081", CPUPct: 48.5, RSSMB: 3072,
		UptimeS: 42, GPUUtilPct: 35, VRAMMB: 9216, TotalVRAMMB: 81920, Model: ptr("qwen2.5-7b"), Slots: 2, Simulated: true}
	bravoEmbed = wsapi.ProcessStats{PID: 5151, Group: "embed", Instance: "9000", CPUPct: 3, RSSMB: 512,
		UptimeS: 600, VRAMMB: 512, TotalVRAMMB: 81920}
	charlieLLM = wsapi.ProcessStats{PID: 6160, Group: "llm", Instance: "8082", CPUPct: 150, RSSMB: 900,
		IOReadMBs: 25, UptimeS: 90061, GPUUtilPct: 5, VRAMMB: 600, TotalVRAMMB: 1000, Model: ptr("mistral-7b"),
		Models: []string{"mistral-7b", "phi-3"}, Engine: "llama.cpp b5000"}
)

type wantRow struct {
	hive string
	workerRow
}

var wantRows = []wantRow{
	{"alpha", workerRow{Key: "llm/8080", State: "saturated", Badge: "saturated", Why: "GPU at 97% with no rbee request: busy outside rbee", Name: "llm/8080", Model: "llama-3.1-8b-instruct",
		PID: "4242", Uptime: "1h 02m", GPU: "97%", VRAM: "20.0 / 24.0 GiB", CPU: "12.5%", RSS: "7.5 GiB", IO: "1.5 / 0.2", Slots: "0 / 4"}},
	{"bravo", workerRow{Key: "embed/9000", State: "idle", Badge: "idle", Why: "free slots, ready for requests", Name: "embed/9000", Model: "unknown",
		PID: "5151", Uptime: "10m 00s", GPU: "0%", VRAM: "0.5 / 80.0 GiB", CPU: "3%", RSS: "512 MiB", IO: "0 / 0", Slots: "0 / 1"}},
	{"bravo", workerRow{Key: "llm/8081", State: "idle", Badge: "idle", Why: "free slots, ready for requests", Name: "llm/8081", SimShown: true, SimText: "simulated",
		Model: "qwen2.5-7b", PID: "5150", Uptime: "42s", GPU: "35%", VRAM: "9.0 / 80.0 GiB", CPU: "48.5%", RSS: "3.0 GiB", IO: "0 / 0", Slots: "0 / 2"}},
	{"charlie", workerRow{Key: "llm/8082", State: "idle", Badge: "idle", Why: "free slots, ready for requests", Name: "llm/8082", Model: "mistral-7b, phi-3 (llama.cpp b5000)",
		PID: "6160", Uptime: "1d 1h", GPU: "5%", VRAM: "600 / 1000 MiB", CPU: "150%", RSS: "900 MiB", IO: "25 / 0", Slots: "0 / 1"}},
}

// TestDashboard_LiveClusterAndFailover opens the dashboard of a real
// three-node cluster in Chromium, on a node that is not queen, and checks that
// it shows what the hives sent; then that a stopped hive turns offline and a
// queen that leaves is replaced on screen, all without a reload. A second tab,
// opened on the queen itself, must find another node's feed once its own node
// is gone.
func TestDashboard_LiveClusterAndFailover(t *testing.T) {
	browser := startBrowser(t)
	both := []string{gossip.RoleQueen, gossip.RoleHive}
	bravoWorkers := newWorkerList(bravoSim, bravoEmbed)
	alpha := startClusterNode(t, "alpha", 2, both, newWorkerList(alphaLLM))
	bravo := startClusterNode(t, "bravo", 1, both, bravoWorkers, alpha.GossipAddr())
	charlie := startClusterNode(t, "charlie", 0, []string{gossip.RoleHive}, newWorkerList(charlieLLM), alpha.GossipAddr())
	testutil.Eventually(t, 15*time.Second, "the nodes agree that alpha is queen", func() error {
		q, err := queenOf(alpha, bravo, charlie)
		if err == nil && q != "alpha" {
			err = fmt.Errorf("queen is %s", q)
		}
		return err
	})

	onBravo := openTab(t, browser, "http://"+bravo.HTTPAddr()+"/")
	onAlpha := openTab(t, browser, "http://"+alpha.HTTPAddr()+"/")

	// 1. Every worker with the figures its hive sent, the queen, members.
	p := waitPage(t, onBravo, 20*time.Second, "the dashboard on bravo shows every hive and worker", func(p page) error {
		if p.ConnState != "live" {
			return fmt.Errorf("feed %s: %s", p.ConnState, p.Conn)
		}
		if p.Queen.V != "alpha" {
			return fmt.Errorf("queen tile says %q", p.Queen.V)
		}
		if len(p.MemberRow) != 3 {
			return fmt.Errorf("%d members listed", len(p.MemberRow))
		}
		for _, want := range wantRows {
			h, ok := p.hive(want.hive)
			if !ok {
				return fmt.Errorf("no hive %s", want.hive)
			}
			if h.Status != "online" {
				return fmt.Errorf("hive %s is %s", h.ID, h.Status)
			}
			got, ok := h.worker(want.Key)
			if !ok {
				return fmt.Errorf("hive %s has no row %s", want.hive, want.Key)
			}
			if got.SparkInk == 0 {
				return fmt.Errorf("%s/%s: sparkline not drawn", want.hive, want.Key)
			}
			got.SparkInk = 0
			if got != want.workerRow {
				return fmt.Errorf("%s/%s shows\n  %+v\nwant\n  %+v", want.hive, want.Key, got, want.workerRow)
			}
		}
		if p.Workers.V != "4" || !strings.Contains(p.Workers.S, "3 available") {
			return fmt.Errorf("workers tile %+v, want 4 online, 3 available (alpha's GPU is busy outside rbee)", p.Workers)
		}
		if p.Hives.V != "3" || !strings.Contains(p.Hives.S, "2 available") {
			return fmt.Errorf("hives tile %+v, want 3 online, 2 available", p.Hives)
		}
		return nil
	})
	for _, m := range p.MemberRow {
		if m.Status != "alive" || m.Queen != (m.Name == "alpha") {
			t.Errorf("member row %+v: want alive, queen mark only on alpha", m)
		}
	}
	if p.SimNote != "1 simulated worker" {
		t.Errorf("simulated note = %q, want %q", p.SimNote, "1 simulated worker")
	}
	if !p.hasEvent("queen is alpha") {
		t.Errorf("events %q lack the queen", p.Events)
	}
	if h, _ := p.hive("bravo"); !strings.Contains(h.Meta, "1 simulated") {
		t.Errorf("hive bravo's header %q does not say it has a simulated worker", h.Meta)
	}
	screenshot(t, onBravo, "dashboard-1280.png", 1280, 800, false)
	screenshot(t, onBravo, "dashboard-390.png", 390, 844, true)
	colorScheme(t, onBravo, "dark")
	screenshot(t, onBravo, "dashboard-dark-1280.png", 1280, 800, false)
	colorScheme(t, onBravo, "")
	resetViewport(t, onBravo)

	// 2. A worker that vanishes from its hive's report is marked gone; a
	// hive that stops reporting turns stale, then offline, visibly and in
	// the event log.
	bravoWorkers.set(bravoSim)
	if err := charlie.Stop(); err != nil {
		t.Fatalf("stop charlie: %v", err)
	}
	waitPage(t, onBravo, 15*time.Second, "charlie turns offline", func(p page) error {
		h, ok := p.hive("charlie")
		if !ok {
			return errors.New("hive charlie gone from the page; it should stay, marked offline")
		}
		if h.Status != "offline" || h.Badge != "offline" || !strings.HasPrefix(h.Seen, "no report for") {
			return fmt.Errorf("charlie: %+v", h)
		}
		if w, _ := h.worker("llm/8082"); w.Badge != "offline" || w.Why != "the hive stopped reporting" {
			return fmt.Errorf("charlie's worker says %q (%q)", w.Badge, w.Why)
		}
		if !p.hasEvent("hive charlie offline") || !p.hasEvent("hive charlie stale") {
			return fmt.Errorf("no stale and offline event lines for it: %q", p.Events)
		}
		if w, _ := mustHive(p, "bravo").worker("embed/9000"); w.State != "gone" || w.Badge != "gone" {
			return fmt.Errorf("bravo's embed/9000, no longer reported: %+v", w)
		}
		if !p.hasEvent("worker bravo/embed/9000 gone") {
			return fmt.Errorf("no event line for the gone worker: %q", p.Events)
		}
		return nil
	})

	// 3. The queen leaves: bravo takes over, the page follows without a
	// reload, and says so in its event log.
	if err := alpha.Leave(5 * time.Second); err != nil {
		t.Fatalf("alpha leave: %v", err)
	}
	waitPage(t, onBravo, 20*time.Second, "the page on bravo shows bravo as the new queen", func(p page) error {
		if p.Queen.V != "bravo" {
			return fmt.Errorf("queen tile says %q", p.Queen.V)
		}
		if !p.hasEvent("queen changed: alpha → bravo") {
			return fmt.Errorf("no failover event: %q", p.Events)
		}
		if h, ok := p.hive("bravo"); !ok || h.Status != "online" {
			return fmt.Errorf("hive bravo: %+v", h)
		}
		if h, ok := p.hive("alpha"); !ok || h.Status != "offline" {
			return fmt.Errorf("hive alpha, which left: %+v", h)
		}
		return nil
	})
	screenshot(t, onBravo, "dashboard-failover-1280.png", 1280, 800, false)

	// The tab served by alpha lost its node: it must have found bravo's
	// feed by itself.
	waitPage(t, onAlpha, 30*time.Second, "the page from alpha reconnects to bravo", func(p page) error {
		if p.ConnState != "live" || !strings.Contains(p.Conn, bravo.HTTPAddr()) {
			return fmt.Errorf("feed %s: %s", p.ConnState, p.Conn)
		}
		if p.Queen.V != "bravo" || !p.hasEvent("queen changed: alpha → bravo") {
			return fmt.Errorf("queen tile %q, events %q", p.Queen.V, p.Events)
		}
		if w, _ := mustHive(p, "bravo").worker("llm/8081"); w.State != "idle" || w.GPU != "35%" {
			return fmt.Errorf("bravo's worker after the reconnect: %+v", w)
		}
		return nil
	})
}

func mustHive(p page, id string) hiveCard {
	h, _ := p.hive(id)
	return h
}
