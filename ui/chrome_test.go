package ui_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/rbee/rbee/internal/testutil"
)

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

// outDir holds screenshots for a person to look at; it is git-ignored.
const outDir = "testdata/out"

// startBrowser starts headless Chromium for the test and stops it (and its
// processes) when the test ends. Without Chromium the test is skipped, unless
// RBEE_REQUIRE_BROWSER is set, as CI does: then it fails.
func startBrowser(t testing.TB) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("RBEE_REQUIRE_BROWSER") != "" {
			t.Fatalf("RBEE_REQUIRE_BROWSER is set but there is no browser: %v (apt-get install chromium)", err)
		}
		t.Skipf("skipping the browser test: %v (apt-get install chromium; RBEE_REQUIRE_BROWSER=1 makes this a failure)", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.WindowSize(1280, 800),
		// Tests compare figures, not fonts; software rendering is what a
		// CI machine has anyway.
		chromedp.DisableGPU,
	)
	if os.Geteuid() == 0 {
		// Chromium refuses to run as root with its sandbox on (containers).
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		cancel()
		acancel()
		t.Fatalf("start %s: %v", chromiumPath, err)
	}
	t.Cleanup(func() {
		cancel()
		acancel() // kills what is left and waits for the process
	})
	return ctx
}

// tab is one browser tab showing the dashboard.
type tab struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	exceptions []string
}

// openTab opens url in a new tab of browser and records the page's uncaught
// exceptions, which fail the test at its end. With RBEE_TEST_LOG set the
// page's console is logged too.
func openTab(t testing.TB, browser context.Context, url string) *tab {
	t.Helper()
	return openTabWith(t, browser, url, "")
}

// openTabWith is openTab with a script (when not "") that runs in the page
// before the page's own.
func openTabWith(t testing.TB, browser context.Context, url, before string) *tab {
	t.Helper()
	logConsole := os.Getenv("RBEE_TEST_LOG") != ""
	ctx, cancel := chromedp.NewContext(browser)
	tb := &tab{ctx: ctx, cancel: cancel, done: make(chan struct{})}
	if err := chromedp.Do(ctx); err != nil { // opens the tab
		cancel()
		t.Fatalf("open tab: %v", err)
	}
	console := chromedp.Console(ctx)
	go func() {
		defer close(tb.done)
		for m, err := range console {
			if err != nil {
				return
			}
			if logConsole {
				t.Logf("page console: %s", m)
			}
			if m.IsException() {
				tb.mu.Lock()
				tb.exceptions = append(tb.exceptions, fmt.Sprintf("%s:%d: %s", m.URL, m.Line+1, m.Text))
				tb.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-tb.done
		tb.mu.Lock()
		defer tb.mu.Unlock()
		for _, e := range tb.exceptions {
			t.Errorf("page %s threw: %s", url, e)
		}
	})
	if before != "" {
		if _, err := chromedp.Call(ctx, cdppage.AddScriptToEvaluateOnNewDocument, cdppage.AddScriptToEvaluateOnNewDocumentParams{Source: before}); err != nil {
			t.Fatalf("add script: %v", err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	return tb
}

// page is what the dashboard shows, read from the DOM as a user sees it.
type page struct {
	Conn      string     `json:"conn"`
	ConnState string     `json:"connState"`
	Queen     tile       `json:"queen"`
	Members   tile       `json:"members"`
	Hives     tile       `json:"hives"`
	Workers   tile       `json:"workers"`
	RPS       tile       `json:"rps"`
	Queue     tile       `json:"queue"`
	SimNote   string     `json:"simNote"`
	MemberRow []member   `json:"memberRows"`
	HiveList  []hiveCard `json:"hiveList"`
	Events    []string   `json:"events"`
	Rows      int        `json:"rows"`
}

type tile struct {
	V string `json:"v"`
	S string `json:"s"`
}

type member struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Queen  bool   `json:"queen"`
}

type hiveCard struct {
	ID      string      `json:"id"`
	Status  string      `json:"status"`
	Badge   string      `json:"badge"`
	Meta    string      `json:"meta"`
	Seen    string      `json:"seen"`
	Workers []workerRow `json:"workers"`
}

type workerRow struct {
	Key      string `json:"key"`
	State    string `json:"state"` // data-state
	Badge    string `json:"badge"` // the state's text
	Why      string `json:"why"`   // the state's reason, on hover
	Name     string `json:"name"`
	SimShown bool   `json:"simShown"`
	SimText  string `json:"simText"`
	Model    string `json:"model"`
	PID      string `json:"pid"`
	Uptime   string `json:"uptime"`
	GPU      string `json:"gpu"`
	VRAM     string `json:"vram"`
	CPU      string `json:"cpu"`
	RSS      string `json:"rss"`
	IO       string `json:"io"`
	Slots    string `json:"slots"`
	// SparkInk counts the sparkline's painted pixels: 0 means not drawn.
	SparkInk int `json:"sparkInk"`
}

func (p page) hive(id string) (hiveCard, bool) {
	for _, h := range p.HiveList {
		if h.ID == id {
			return h, true
		}
	}
	return hiveCard{}, false
}

func (h hiveCard) worker(key string) (workerRow, bool) {
	for _, w := range h.Workers {
		if w.Key == key {
			return w, true
		}
	}
	return workerRow{}, false
}

func (p page) hasEvent(text string) bool {
	for _, e := range p.Events {
		if strings.Contains(e, text) {
			return true
		}
	}
	return false
}

// readPageJS reads the dashboard's DOM into a page.
const readPageJS = `(() => {
  const q = (sel, root = document) => root.querySelector(sel);
  const text = (el) => (el ? el.textContent : '');
  const tile = (id) => ({ v: text(q('#' + id + ' [data-f=v]')), s: text(q('#' + id + ' [data-f=s]')) });
  const ink = (c) => {
    if (!c || !c.width || !c.height) return 0;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  };
  return {
    conn: text(q('#conn-text')),
    connState: q('#conn').dataset.state,
    queen: tile('t-queen'), members: tile('t-members'), hives: tile('t-hives'),
    workers: tile('t-workers'), rps: tile('t-rps'), queue: tile('t-queue'),
    simNote: q('#sim-note').hidden ? '' : text(q('#sim-note')),
    memberRows: [...document.querySelectorAll('#members [data-member]')].map((r) => ({
      name: r.dataset.member, status: text(q('[data-f=status]', r)), queen: !q('[data-f=queen]', r).hidden,
    })),
    hiveList: [...document.querySelectorAll('#hives [data-hive]')].map((h) => ({
      id: h.dataset.hive, status: h.dataset.status, badge: text(q('[data-f=status]', h)),
      meta: text(q('[data-f=meta]', h)), seen: text(q('[data-f=seen]', h)),
      workers: [...h.querySelectorAll('[data-worker]')].map((r) => {
        const f = (n) => text(q('[data-f=' + n + ']', r));
        return {
          key: r.dataset.worker, state: r.dataset.state, badge: f('state'), why: q('[data-f=state]', r).title, name: f('name'),
          simShown: !q('[data-f=sim]', r).hidden, simText: q('[data-f=sim]', r).hidden ? '' : f('sim'), model: f('model'), pid: f('pid'),
          uptime: f('uptime'), gpu: f('gpu'), vram: f('vram'), cpu: f('cpu'), rss: f('rss'), io: f('io'),
          slots: f('slots'), sparkInk: ink(q('canvas', r)),
        };
      }),
    })),
    events: [...document.querySelectorAll('#events li')].map((li) => li.textContent),
    rows: document.querySelectorAll('#hives [data-worker]').length,
  };
})()`

func readPage(ctx context.Context) (page, error) {
	return chromedp.Run(ctx, chromedp.Evaluate[page](readPageJS))
}

// waitPage reads the page every 100 ms (a read is a script run in the
// browser) until check accepts it or within passes, then fails the test with
// check's last complaint and what the page showed; at once if the tab closes.
func waitPage(t testing.TB, tb *tab, within time.Duration, what string, check func(page) error) page {
	t.Helper()
	var p page
	testutil.Every(100*time.Millisecond).Eventually(t, within, what, func() error {
		if err := tb.ctx.Err(); err != nil {
			return testutil.Stop(fmt.Errorf("tab closed: %w", err))
		}
		var err error
		if p, err = readPage(tb.ctx); err != nil {
			return fmt.Errorf("read page: %w", err)
		}
		if err := check(p); err != nil {
			return fmt.Errorf("%w\npage: %+v", err, p)
		}
		return nil
	})
	return p
}

// screenshot saves a full-page PNG of the tab at the given viewport width
// under testdata/out and returns its path.
func screenshot(t testing.TB, tb *tab, name string, width, height int64, mobile bool) string {
	t.Helper()
	var vopts []chromedp.EmulateViewportOption
	if mobile {
		vopts = append(vopts, chromedp.EmulateScale(2), chromedp.EmulateMobile)
	}
	if err := chromedp.Do(tb.ctx, chromedp.EmulateViewport(width, height, vopts...)); err != nil {
		t.Fatalf("set viewport %dx%d: %v", width, height, err)
	}
	// Two frames, so that the page has laid out and redrawn its
	// sparklines for the new width.
	if err := chromedp.Do(tb.ctx, chromedp.Evaluate[chromedp.Void](
		`new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r())))`, chromedp.EvalAwaitPromise)); err != nil {
		t.Fatalf("wait for a frame: %v", err)
	}
	buf, err := chromedp.Run(tb.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return saveShot(t, name, buf)
}

// screenshotViewport saves what the tab's viewport shows.
func screenshotViewport(t testing.TB, tb *tab, name string) string {
	t.Helper()
	buf, err := chromedp.Run(tb.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return saveShot(t, name, buf)
}

func saveShot(t testing.TB, name string, buf []byte) string {
	t.Helper()
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(outDir, name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d bytes)", path, len(buf))
	return path
}

// colorScheme makes the tab prefer a dark or light color scheme ("" for the
// system's).
func colorScheme(t testing.TB, tb *tab, scheme string) {
	t.Helper()
	p := emulation.SetEmulatedMediaParams{}
	if scheme != "" {
		p.Features = []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}
	}
	if _, err := chromedp.Call(tb.ctx, emulation.SetEmulatedMedia, p); err != nil {
		t.Fatalf("emulate %s scheme: %v", scheme, err)
	}
}

// resetViewport undoes screenshot's emulation: the tab is the browser's
// window again (1280x800).
func resetViewport(t testing.TB, tb *tab) {
	t.Helper()
	if _, err := chromedp.Call(tb.ctx, emulation.ClearDeviceMetricsOverride, cdp.Empty{}); err != nil {
		t.Fatalf("reset viewport: %v", err)
	}
}
