package node

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/rbee/rbee/wsapi"
)

// The OpenAI-compatible API every node serves, and the hive's side of it.
const (
	PathChat        = "/v1/chat/completions"
	PathCompletions = "/v1/completions"
	PathEmbeddings  = "/v1/embeddings"
	PathModels      = "/v1/models"
	// PathHiveProxy prefixes an inference path on the hive that owns the
	// leased worker: POST /v1/hive/proxy/v1/chat/completions.
	PathHiveProxy = "/v1/hive/proxy"
)

// Headers from the entry node to the hive naming the lease.
const (
	hdrLease   = "X-Rbee-Lease"
	hdrWorker  = "X-Rbee-Worker"
	hdrModel   = "X-Rbee-Model"
	hdrEntry   = "X-Rbee-Entry"
	hdrRequest = "X-Rbee-Request"
	// hdrRetry on a hive's 503 says it did not start the request (the
	// worker is full, gone or unreachable): the entry node may ask for
	// another lease.
	hdrRetry = "X-Rbee-Retry"
)

// maxInferenceBody bounds a request body: embeddings of a large batch are the
// biggest legitimate ones.
const maxInferenceBody = 32 << 20

// maxAttempts bounds how often one client request is tried on another worker
// after a hive refused it or could not be reached before any byte of the
// answer was sent.
const maxAttempts = 3

// failingFor: a worker the hive could not reach is reported failing this long,
// so the scheduler stops sending it requests while it restarts.
const failingFor = 10 * time.Second

// newProxyTransport returns a transport for proxying: no proxy from the
// environment (HTTP_PROXY must not see cluster traffic), no transparent gzip
// (bodies pass through unchanged), and enough idle connections for a busy
// worker.
func newProxyTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ResponseHeaderTimeout: 0, // a worker may think for minutes before the first byte
		ForceAttemptHTTP2:     false,
	}
}

// apiAuthorized checks a client of the OpenAI API: with --api-key set, a
// bearer key from that list (or the cluster token); without, the rules of
// the admin API (cluster token, or loopback when allowed).
func (n *Node) apiAuthorized(h http.HandlerFunc) http.HandlerFunc {
	if len(n.cfg.APIKeys) == 0 {
		return n.authorized(h)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		ok := tok != "" && n.cfg.Key.CheckToken(tok)
		for _, k := range n.cfg.APIKeys {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(k)) == 1 {
				ok = true
			}
		}
		if !ok {
			n.metrics.requests.WithLabelValues("", "401").Inc()
			WriteError(w, http.StatusUnauthorized, "invalid_api_key", "missing or wrong API key (send Authorization: Bearer <key>)")
			return
		}
		h(w, r)
	}
}

// handleInference is the entry node: it asks the queen for a lease, then
// proxies to the hive that owns the worker (or, when that is this node,
// straight to the worker).
func (n *Node) handleInference(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInferenceBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			n.fail(w, "", http.StatusRequestEntityTooLarge, "invalid_request_error", fmt.Sprintf("body larger than %d bytes", maxInferenceBody))
			return
		}
		n.fail(w, "", http.StatusBadRequest, "invalid_request_error", "read body: "+err.Error())
		return
	}
	var head struct {
		Model string `json:"model"`
	}
	// JSON v2: it scans a long prompt about twice as fast as
	// encoding/json, and rejects what a worker might read differently
	// (duplicate keys, invalid UTF-8).
	if err := jsonv2.Unmarshal(body, &head); err != nil {
		n.fail(w, "", http.StatusBadRequest, "invalid_request_error", "body is not valid JSON: "+err.Error())
		return
	}
	if head.Model == "" {
		n.fail(w, "", http.StatusBadRequest, "invalid_request_error", `"model" is required`)
		return
	}
	if err := wsapi.ValidModel(head.Model); err != nil {
		n.fail(w, "", http.StatusBadRequest, "invalid_request_error", `"model": `+err.Error())
		return
	}
	model := head.Model
	for attempt := 1; ; attempt++ {
		waitStart := time.Now()
		g, lerr, err := n.lc.acquire(r.Context(), model, n.cfg.QueueTimeout)
		if err != nil {
			n.metrics.requests.WithLabelValues(model, "499").Inc()
			return // the client went away while waiting
		}
		// Metrics name the model as served (a bounded set), not as asked.
		switch {
		case lerr == nil:
			n.metrics.queueWait.WithLabelValues(g.Model).Observe(time.Since(waitStart).Seconds())
		case lerr.Status != http.StatusNotFound:
			n.metrics.queueWait.WithLabelValues(model).Observe(time.Since(waitStart).Seconds())
		}
		if lerr != nil {
			if lerr.RetryAfterMS > 0 {
				w.Header().Set("Retry-After", strconv.FormatInt(max((lerr.RetryAfterMS+999)/1000, 1), 10))
			}
			n.fail(w, model, lerr.Status, lerr.ErrorType, lerr.Message)
			return
		}
		retry := n.forward(w, r, body, g, start)
		if !retry {
			return
		}
		n.lc.release(g.LeaseID)
		if attempt == maxAttempts {
			n.fail(w, model, http.StatusServiceUnavailable, "worker_unavailable",
				fmt.Sprintf("model %q: %d workers in a row could not take the request", model, attempt))
			return
		}
		n.log.Debug("retrying on another worker", "model", model, "hive", g.Hive, "worker", g.Worker)
	}
}

func (n *Node) fail(w http.ResponseWriter, model string, status int, typ, msg string) {
	if status == http.StatusNotFound {
		// Clients choose the name: labelling unknown ones would let
		// them grow the metrics without bound.
		model = "(unknown)"
	}
	n.metrics.requests.WithLabelValues(model, strconv.Itoa(status)).Inc()
	WriteError(w, status, typ, msg)
}

// forward sends the request under lease g and streams the answer back. It
// returns true when nothing was sent to the client and the request may be
// tried on another worker.
func (n *Node) forward(w http.ResponseWriter, r *http.Request, body []byte, g *wsapi.LeaseGrant, start time.Time) (retry bool) {
	lease := wsapi.LeaseInfo{LeaseID: g.LeaseID, Worker: g.Worker, Model: g.Model, Entry: n.cfg.Name, RequestID: g.RequestID}
	if g.Hive == n.cfg.Name {
		return n.serveLease(w, r, r.URL.Path, bytes.NewReader(body), lease, start, true)
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, "http://"+g.HiveAddr+PathHiveProxy+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		return true
	}
	copyRequestHeaders(req.Header, r.Header)
	req.Header.Set(hdrLease, g.LeaseID)
	req.Header.Set(hdrWorker, g.Worker)
	req.Header.Set(hdrModel, g.Model)
	req.Header.Set(hdrEntry, n.cfg.Name)
	req.Header.Set(hdrRequest, g.RequestID)
	if tok := n.cfg.Key.HTTPToken(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := n.proxyClient.Do(req)
	if err != nil {
		if r.Context().Err() != nil {
			n.metrics.requests.WithLabelValues(g.Model, "499").Inc()
			return false
		}
		n.log.Warn("hive unreachable", "hive", g.Hive, "addr", g.HiveAddr, "err", err)
		return true
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(hdrRetry) != "" {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return true
	}
	n.relay(w, r, resp, g.Model, start, true)
	return false
}

// relay copies a response to the client as it arrives, flushing each read so
// that server-sent events reach the client one by one. A source that breaks
// mid-way (the worker or hive died) aborts the client's connection, so the
// client sees an error, never a silently truncated answer.
//
// Only the entry node (entry) counts the request in its metrics, so a request
// is counted once however many hops it took.
func (n *Node) relay(w http.ResponseWriter, r *http.Request, resp *http.Response, model string, start time.Time, entry bool) {
	h := w.Header()
	for k, vs := range resp.Header {
		if hopHeader[k] || strings.HasPrefix(k, "X-Rbee-") {
			continue
		}
		h[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	if entry {
		n.metrics.requests.WithLabelValues(model, strconv.Itoa(resp.StatusCode)).Inc()
	}
	// Only event streams are flushed per read: a JSON answer goes out in
	// as few writes as the server can manage, often one with the headers.
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	rc := http.NewResponseController(w)
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	first := true
	for {
		nr, rerr := resp.Body.Read(buf)
		if nr > 0 {
			if first && entry {
				n.metrics.ttfb.WithLabelValues(model).Observe(time.Since(start).Seconds())
				first = false
			}
			if _, werr := w.Write(buf[:nr]); werr != nil {
				return // the client went away; closing resp cancels upstream
			}
			if stream {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			return
		}
		if rerr != nil {
			if r.Context().Err() == nil {
				n.log.Warn("upstream broke mid-response", "model", model, "err", rerr)
				if entry {
					n.metrics.broken.WithLabelValues(model).Inc()
				}
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// hopHeader lists the hop-by-hop headers a proxy must not forward (RFC 9110
// 7.6.1), plus Content-Length, which the server recomputes.
var hopHeader = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// copyRequestHeaders passes on what a worker may care about, and not the
// client's credentials, which are rbee's business. The body was parsed as
// JSON, so it goes on labelled as JSON whatever the client said (curl -d
// says form data).
func copyRequestHeaders(dst, src http.Header) {
	for _, k := range []string{"Accept", "Accept-Language", "User-Agent", "X-Request-Id", "Openai-Organization"} {
		if v := src.Values(k); len(v) > 0 {
			dst[k] = v
		}
	}
	dst.Set("Content-Type", "application/json")
}

// handleHiveProxy is the hive's end: an entry node holding a lease on one of
// this hive's workers sends the request here.
func (n *Node) handleHiveProxy(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, PathHiveProxy)
	switch path {
	case PathChat, PathCompletions, PathEmbeddings:
	default:
		WriteError(w, http.StatusNotFound, "not_found", "no inference route "+path)
		return
	}
	lease := wsapi.LeaseInfo{LeaseID: r.Header.Get(hdrLease), Worker: r.Header.Get(hdrWorker), Model: r.Header.Get(hdrModel),
		Entry: r.Header.Get(hdrEntry), RequestID: r.Header.Get(hdrRequest)}
	if lease.LeaseID == "" || lease.Worker == "" || len(lease.LeaseID) > 256 || len(lease.Worker) > 256 {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", "missing lease headers")
		return
	}
	// Read the body whole: forwarded with its length, the worker gets it in
	// one write instead of a chunked stream.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInferenceBody))
	if err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", "read body: "+err.Error())
		return
	}
	if n.serveLease(w, r, path, bytes.NewReader(body), lease, time.Now(), false) {
		w.Header().Set(hdrRetry, "1")
		WriteError(w, http.StatusServiceUnavailable, "worker_unavailable", "worker "+lease.Worker+" cannot take the request now")
	}
}

// serveLease proxies one request to a worker of this hive under a lease, and
// returns the lease when the response ends. It refuses (returning true,
// having written nothing) when the worker is unknown, already serving as many
// requests as it has slots (a lease from a previous queen may still be on its
// way), or unreachable.
func (n *Node) serveLease(w http.ResponseWriter, r *http.Request, path string, body io.Reader, lease wsapi.LeaseInfo, start time.Time, entry bool) (retry bool) {
	group, instance, _ := strings.Cut(lease.Worker, "/")
	ep := ""
	if e, ok := n.cfg.Collector.(WorkerEndpoints); ok {
		ep = e.Endpoint(group, instance)
	}
	if ep == "" {
		n.log.Warn("lease for a worker with no known API address", "worker", lease.Worker)
		return true
	}
	lease.Since = time.Now().UTC()
	if !n.active.start(lease) {
		return true
	}
	defer func() {
		n.active.end(lease.LeaseID)
		n.lc.release(lease.LeaseID)
	}()
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, ep+path, body)
	if err != nil {
		return true
	}
	copyRequestHeaders(req.Header, r.Header)
	resp, err := n.proxyClient.Do(req)
	if err != nil {
		if r.Context().Err() != nil {
			return false
		}
		n.active.markFailing(lease.Worker)
		n.log.Warn("worker unreachable", "worker", lease.Worker, "url", ep, "err", err)
		return true
	}
	defer resp.Body.Close()
	n.relay(w, r, resp, lease.Model, start, entry)
	return false
}

// WorkerEndpoints is implemented by a Collector that knows each worker's API
// address, which a hive needs to proxy to it.
type WorkerEndpoints interface {
	Endpoint(group, instance string) string
}

// activeLeases is the hive's list of requests it is serving: listed in its
// telemetry, and checked against each worker's slots.
type activeLeases struct {
	mu      sync.Mutex
	leases  map[string]wsapi.LeaseInfo
	busy    map[string]int       // worker -> requests
	slots   map[string]int       // worker -> slots, from the last telemetry
	failing map[string]time.Time // worker -> until
}

func newActiveLeases() *activeLeases {
	return &activeLeases{leases: map[string]wsapi.LeaseInfo{}, busy: map[string]int{}, slots: map[string]int{}, failing: map[string]time.Time{}}
}

func (a *activeLeases) start(l wsapi.LeaseInfo) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	slots, known := a.slots[l.Worker]
	if !known || a.busy[l.Worker] >= slots {
		return false
	}
	if _, dup := a.leases[l.LeaseID]; dup {
		return false
	}
	a.leases[l.LeaseID] = l
	a.busy[l.Worker]++
	return true
}

func (a *activeLeases) end(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.leases[id]
	if !ok {
		return
	}
	delete(a.leases, id)
	if a.busy[l.Worker]--; a.busy[l.Worker] <= 0 {
		delete(a.busy, l.Worker)
	}
}

func (a *activeLeases) markFailing(worker string) {
	a.mu.Lock()
	a.failing[worker] = time.Now().Add(failingFor)
	a.mu.Unlock()
}

// report records this tick's workers (their slots) and marks them in place
// with their health; it returns the leases being served.
func (a *activeLeases) report(workers []wsapi.ProcessStats, now time.Time) []wsapi.LeaseInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.slots)
	for i := range workers {
		w := &workers[i]
		key := w.Group + "/" + w.Instance
		a.slots[key] = max(w.Slots, 1)
		if until, ok := a.failing[key]; ok {
			if now.Before(until) {
				w.Health = "failing"
			} else {
				delete(a.failing, key)
			}
		}
	}
	if len(a.leases) == 0 {
		return nil
	}
	out := make([]wsapi.LeaseInfo, 0, len(a.leases))
	for _, l := range a.leases {
		out = append(out, l)
	}
	return out
}

// modelObject is one entry of /v1/models, in OpenAI's shape.
type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// servedModels lists the models fresh workers serve now. Only the queen
// knows; other nodes ask it.
func (n *Node) servedModels(ctx context.Context) ([]modelObject, error) {
	qs, _, err := n.clusterQueues(ctx)
	if err != nil {
		return nil, err
	}
	out := []modelObject{}
	for _, q := range qs {
		if q.Slots > 0 {
			out = append(out, modelObject{ID: q.Model, Object: "model", Created: n.start.Unix(), OwnedBy: "rbee"})
		}
	}
	return out, nil
}

// handleModels answers GET /v1/models: every model the cluster serves.
func (n *Node) handleModels(w http.ResponseWriter, r *http.Request) {
	ms, err := n.servedModels(r.Context())
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "no_queen", err.Error())
		return
	}
	writeJSON(w, struct {
		Object string        `json:"object"`
		Data   []modelObject `json:"data"`
	}{Object: "list", Data: ms})
}

// handleModel answers GET /v1/models/{model}, which some clients call to
// check a model before using it.
func (n *Node) handleModel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("model")
	ms, err := n.servedModels(r.Context())
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "no_queen", err.Error())
		return
	}
	for _, m := range ms {
		if m.ID == id {
			writeJSON(w, m)
			return
		}
	}
	n.fail(w, "", http.StatusNotFound, "model_not_found", fmt.Sprintf("model %q is not served by this cluster", truncateText(id, 200)))
}

// clusterQueues returns the queen's per-model state, asking the queen when
// this node is not it.
func (n *Node) clusterQueues(ctx context.Context) ([]wsapi.QueueStats, float64, error) {
	q, ok := n.Queen()
	switch {
	case !ok:
		return nil, 0, errors.New("no queen elected")
	case q.Name == n.cfg.Name:
		qs, rate := n.queueStats(time.Now())
		return qs, rate, nil
	}
	v, err := n.queenCluster(ctx, q.HTTPAddr)
	if err != nil {
		return nil, 0, err
	}
	return v.Queues, v.RequestsPerS, nil
}
