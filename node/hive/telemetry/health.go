package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/rbee/rbee/wsapi"
)

// What a health check that ran out of time found.
var (
	// ErrNoConnection: the worker could not be connected to in time (a
	// machine that is off, a port a firewall drops).
	ErrNoConnection = errors.New("no connection in time")
	// ErrNoAnswer: connected, but the worker did not answer in time. It
	// is alive, if busy or stuck: that says nothing of whether it is down.
	ErrNoAnswer = errors.New("no answer in time")
)

const (
	// healthWait bounds a tick's health checks, which run at once while
	// the rest of Collect works: a server that is up answers /health in
	// milliseconds, and 300 ms leaves most of a 1 s tick for the rest.
	healthWait = 300 * time.Millisecond
	// silentFor is how long a worker may go without a connection in time
	// before it is called down: a packet or two lost on a busy LAN is not
	// a machine that is gone, while one unreachable this long serves
	// nobody. Refused connections and error statuses count at once.
	silentFor = 10 * time.Second
)

// CheckHealth asks the worker at baseURL whether it is up: GET /health, or,
// where it has none (404, 405: Ollama), GET /v1/models. A 2xx answer is up. The
// error is why not, in words, as the hive reports it: "GET
// http://127.0.0.1:9/health: connection refused". It wraps ErrNoConnection or
// ErrNoAnswer when ctx ended before the worker was connected to or answered.
func (p APIProber) CheckHealth(ctx context.Context, baseURL string) error {
	base, err := modelAPIBase(baseURL)
	if err != nil {
		return fmt.Errorf("check worker %q: %w", baseURL, err)
	}
	// What the reason shows: a password in the URL stays on the hive.
	shown := base
	if u, err := url.Parse(base); err == nil {
		shown = u.Redacted()
	}
	code, err := p.status(ctx, base+"/health")
	switch {
	case err != nil:
		return fmt.Errorf("GET %s/health: %w", shown, err) // unreachable: /v1/models would not answer either
	case code/100 == 2:
		return nil
	case code != http.StatusNotFound && code != http.StatusMethodNotAllowed:
		return fmt.Errorf("GET %s/health: %s", shown, statusLine(code)) // it has one, and says what is wrong
	}
	code, err = p.status(ctx, base+"/v1/models")
	switch {
	case err != nil:
		return fmt.Errorf("GET %s/v1/models: %w", shown, err)
	case code/100 != 2:
		return fmt.Errorf("GET %s/v1/models: %s", shown, statusLine(code))
	}
	return nil
}

func statusLine(code int) string {
	if t := http.StatusText(code); t != "" {
		return fmt.Sprintf("%d %s", code, t)
	}
	return fmt.Sprintf("status %d", code)
}

// status GETs target and returns the answer's status code, or, when none
// came, why in a few words ("connection refused"): out of time, whether it
// had connected (ErrNoAnswer) or not (ErrNoConnection).
func (p APIProber) status(ctx context.Context, target string) (int, error) {
	var connected atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { connected.Store(true) }})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, err
	}
	resp, err := p.client().Do(req)
	if err != nil {
		err = cause(err)
		if errors.Is(err, ErrNoConnection) && connected.Load() {
			err = ErrNoAnswer
		}
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// cause is the part of an HTTP client's error a person needs: "connection
// refused" rather than `Get "...": dial tcp 127.0.0.1:9: connect: connection
// refused`.
func cause(err error) error {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return ErrNoConnection
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// health is what the checks said of one --worker server lately.
type health struct {
	down string // why it is down; "" while up
	// silentSince is the first of the checks in a row that could not
	// connect in time; zero when the last one could.
	silentSince time.Time
}

// note takes the result of the check made at now. A worker that was
// connected to but did not answer in time keeps its verdict: it lives, and
// the next answer tells.
func (h *health) note(err error, now time.Time) {
	switch {
	case err == nil:
		h.down, h.silentSince = "", time.Time{}
	case errors.Is(err, ErrNoAnswer):
		h.silentSince = time.Time{}
	case errors.Is(err, ErrNoConnection) || errors.Is(err, context.DeadlineExceeded):
		if h.silentSince.IsZero() {
			h.silentSince = now
		}
		if now.Sub(h.silentSince) >= silentFor {
			h.down = reasonText(fmt.Sprintf("%v for %s", err, now.Sub(h.silentSince).Round(time.Second)))
		}
	default:
		h.down, h.silentSince = reasonText(err.Error()), time.Time{}
	}
}

// maxReason bounds a reason on the wire, well inside what the queen accepts
// (wsapi's 256 bytes a field): a long URL must not get the report refused.
const maxReason = 200

// reasonText is s as one short line of text.
func reasonText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) <= maxReason {
		return s
	}
	n := maxReason - len("...")
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// healthChecks is one tick's checks of the servers rbee did not start, in
// flight while the rest of Collect works. Collect waits for them all before it
// returns, so none outlives the tick.
type healthChecks struct {
	wg     sync.WaitGroup
	errs   []error // by source
	cancel context.CancelFunc
}

// startHealthChecks checks every --worker server among srcs at once, each
// within healthWait.
func (c *Collector) startHealthChecks(ctx context.Context, srcs []source) *healthChecks {
	check := c.cfg.CheckHealth
	if check == nil {
		check = c.prober.CheckHealth
	}
	var hctx context.Context
	hc := &healthChecks{cancel: func() {}}
	for i := range srcs {
		if srcs[i].static == nil || srcs[i].baseURL == "" {
			continue
		}
		if hctx == nil {
			hctx, hc.cancel = context.WithTimeout(ctx, healthWait)
			hc.errs = make([]error, len(srcs))
		}
		base := srcs[i].baseURL
		hc.wg.Go(func() { hc.errs[i] = check(hctx, base) })
	}
	return hc
}

// markHealth waits for the checks and marks each worker that is down, in
// out, with why. Checks cancelled with ctx (the node is stopping) leave their
// workers' last verdict; one that ran out of time counts as health.note says.
func (c *Collector) markHealth(ctx context.Context, hc *healthChecks, srcs []source, out []wsapi.ProcessStats, now time.Time) {
	hc.wg.Wait()
	hc.cancel()
	stopping := errors.Is(ctx.Err(), context.Canceled)
	if hc.errs == nil {
		return // nothing to check
	}
	for i := range srcs {
		sw := srcs[i].static
		if sw == nil || srcs[i].baseURL == "" {
			continue
		}
		if !stopping {
			was := sw.health.down
			sw.health.note(hc.errs[i], now)
			switch is := sw.health.down; {
			case is != "" && was == "":
				c.log.Warn("worker is down: it gets no requests until it answers", "worker", srcs[i].baseURL, "reason", is)
			case is == "" && was != "":
				c.log.Info("worker is up again", "worker", srcs[i].baseURL)
			}
		}
		if why := sw.health.down; why != "" {
			out[i].Health, out[i].HealthReason = wsapi.HealthDown, why
		}
	}
}
