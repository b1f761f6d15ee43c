package ui_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/ui"
)

// countSockets, run before the page's scripts, counts the WebSockets the
// page's own thread opens (a worker has its own WebSocket, untouched).
const countSockets = `window.__mainSockets = 0;
{
  const W = window.WebSocket;
  window.WebSocket = class extends W {
    constructor(...a) { super(...a); window.__mainSockets++; }
  };
}`

type workerPage struct {
	Hives   []string `json:"hives"`
	Rows    int      `json:"rows"`
	Filled  int      `json:"filled"`
	HiveV   string   `json:"hiveV"`
	Sockets int      `json:"sockets"`
}

const readWorkerPageJS = `(() => {
  const rows = [...document.querySelectorAll('#hives [data-worker]')];
  return {
    hives: [...document.querySelectorAll('#hives [data-hive]')].map((s) => s.dataset.hive),
    rows: rows.length,
    filled: rows.filter((r) => /^\d+ \/ 2$/.test(r.querySelector('[data-f=slots]').textContent)).length,
    hiveV: document.querySelector('#t-hives [data-f=v]').textContent,
    sockets: window.__mainSockets,
  };
})()`

// waitWorkerPage reads the page until check accepts it.
func waitWorkerPage(t *testing.T, tb *tab, what string, check func(workerPage) error) workerPage {
	t.Helper()
	var p workerPage
	testutil.Every(100*time.Millisecond).Eventually(t, 30*time.Second, what, func() error {
		var err error
		if p, err = chromedp.Run(tb.ctx, chromedp.Evaluate[workerPage](readWorkerPageJS)); err != nil {
			return err
		}
		if err := check(p); err != nil {
			return fmt.Errorf("%w (page: %+v)", err, p)
		}
		return nil
	})
	return p
}

// filled: the first hives show, every row of theirs filled in, and the
// summary counts them all.
func filled(fc *fakeCluster, workers int) func(workerPage) error {
	return func(p workerPage) error {
		switch {
		case len(p.Hives) == 0 || p.Hives[0] != fc.hiveID(0):
			return errors.New("the first hive is not first")
		case p.Rows != len(p.Hives)*workers || p.Filled != p.Rows:
			return errors.New("not every row filled in")
		case p.HiveV != fmt.Sprint(fc.hives):
			return fmt.Errorf("hives tile says %q", p.HiveV)
		}
		return nil
	}
}

// TestDashboard_FeedInWorker: the page reads its feed in a Web Worker (its
// own thread opens no WebSocket), asks for batches, and takes a batched
// feed (JSON arrays of events) as well as one event a message.
func TestDashboard_FeedInWorker(t *testing.T) {
	const hives, workers = 30, 4
	browser := startBrowser(t)
	fc := newFakeCluster(t, hives, workers, ui.Handler())
	fc.batch.Store(7)
	tb := openTabWith(t, browser, fc.srv.URL+"/", countSockets)
	p := waitWorkerPage(t, tb, "the batched feed fills the rows", filled(fc, workers))
	if p.Sockets != 0 {
		t.Errorf("the page's thread opened %d WebSockets, want none (the worker reads the feed)", p.Sockets)
	}
	if fc.batched.Load() == 0 {
		t.Error("the page did not ask for a batched feed")
	}
	// Collapsing a hive is the page's own: its rows hide, and come back
	// filled in.
	first := fmt.Sprintf(`#hives [data-hive=%q]`, fc.hiveID(0))
	for _, hidden := range []bool{true, false} {
		if err := chromedp.Do(tb.ctx, chromedp.Click(first+" .tog")); err != nil {
			t.Fatal(err)
		}
		testutil.Every(100*time.Millisecond).Eventually(t, 10*time.Second, fmt.Sprintf("rows hidden: %v", hidden), func() error {
			got, err := chromedp.Run(tb.ctx, chromedp.Evaluate[bool](fmt.Sprintf("document.querySelector(%q).hidden", first+" [data-f=rows]")))
			if err != nil {
				return err
			}
			if got != hidden {
				return fmt.Errorf("rows hidden: %v", got)
			}
			return nil
		})
	}
	waitWorkerPage(t, tb, "the expanded hive's rows are filled in", filled(fc, workers))
	// The filter runs in the worker too.
	if err := chromedp.Do(tb.ctx, chromedp.SendKeys("#filter", fc.hiveID(hives-1))); err != nil {
		t.Fatal(err)
	}
	waitWorkerPage(t, tb, "the filter finds the last hive", func(p workerPage) error {
		if !slices.Equal(p.Hives, []string{fc.hiveID(hives - 1)}) || p.Filled != workers {
			return errors.New("want the last hive alone, filled in")
		}
		return nil
	})
}

// TestDashboard_WithoutWorkers: where a page cannot start a Web Worker (there
// is no Worker, or its script fails to load), it reads the feed on its own
// thread and shows the same.
func TestDashboard_WithoutWorkers(t *testing.T) {
	const hives, workers = 30, 4
	browser := startBrowser(t)
	fc := newFakeCluster(t, hives, workers, ui.Handler())
	for _, tc := range []struct{ name, script string }{
		{"no Worker", "delete window.Worker;"},
		{"worker fails to load", `{
		  const W = window.Worker;
		  window.Worker = class extends W { constructor(u, o) { super('/ui/missing.js', o); } };
		}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := openTabWith(t, browser, fc.srv.URL+"/", countSockets+"\n"+tc.script)
			p := waitWorkerPage(t, tb, "the page fills the rows by itself", filled(fc, workers))
			if p.Sockets == 0 {
				t.Error("no WebSocket opened on the page's thread, yet it has no worker")
			}
			if err := chromedp.Do(tb.ctx, chromedp.SendKeys("#filter", fc.hiveID(hives-1))); err != nil {
				t.Fatal(err)
			}
			waitWorkerPage(t, tb, "the filter finds the last hive", func(p workerPage) error {
				if !slices.Equal(p.Hives, []string{fc.hiveID(hives - 1)}) || p.Filled != workers {
					return errors.New("want the last hive alone, filled in")
				}
				return nil
			})
		})
	}
}
