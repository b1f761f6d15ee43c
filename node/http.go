package node

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/ui"
	"github.com/rbee/rbee/wsapi"
)

// maxAdminBody bounds admin request bodies: a join list of a few addresses.
const maxAdminBody = 64 << 10

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathHealth, n.handleHealth)
	mux.HandleFunc("GET "+api.PathReady, n.handleReady)
	mux.HandleFunc("GET "+api.PathCluster, n.authorized(n.handleCluster))
	mux.HandleFunc(api.PathUsage, proxy.MethodNotAllowed(http.MethodGet)) // rbee's own: another method is not for a worker
	mux.HandleFunc("GET "+api.PathUsage, n.authorized(n.handleUsage))
	mux.HandleFunc("GET "+api.PathFeed, n.authorized(n.handleFeed))
	// The hive session authenticates with its own challenge-response.
	mux.HandleFunc("GET "+api.PathSession, n.sessionsOverTLS(n.queen.HandleSession))
	mux.HandleFunc("POST "+api.PathAdminJoin, n.peersOnly(n.handleJoin))
	mux.HandleFunc("POST "+api.PathAdminLeave, n.peersOnly(n.handleLeave))
	mux.HandleFunc("GET "+api.PathAdminMembers, n.authorized(n.handleMembers))
	mux.HandleFunc("POST "+api.PathAdminWorkers, n.peersOnly(n.handleRegisterWorker))
	// The seed's hives post telemetry: it changes the cluster's view, so
	// it takes what admin calls take (cluster TLS or loopback), not the
	// read token every dashboard holds.
	mux.HandleFunc("POST "+api.PathHiveHeartbeat, n.peersOnly(n.handleHiveHeartbeat))
	p := n.proxy
	// Every OpenAI-style POST under /v1/ but rbee's own paths goes to a
	// worker (proxy.InferencePath); another method there gets a 405.
	mux.HandleFunc("/v1/", proxy.HandleAPI(p.Observe(n.inferenceAuthorized(p.HandleInference))))
	mux.HandleFunc("GET "+api.PathModels, n.apiAuthorized(p.HandleModels))
	mux.HandleFunc("GET "+api.PathModels+"/{model...}", n.apiAuthorized(p.HandleModel))
	mux.HandleFunc(api.PathModels, proxy.MethodNotAllowed(http.MethodGet, http.MethodHead))
	mux.HandleFunc(api.PathModels+"/{model...}", proxy.MethodNotAllowed(http.MethodGet, http.MethodHead))
	mux.HandleFunc("POST "+api.PathHiveProxy+"/", n.peersOnly(p.HandleHiveProxy))
	mux.HandleFunc("GET "+api.PathHiveFiles+"/{model}", n.peersOnly(n.handleModelFiles))
	mux.HandleFunc("POST "+api.PathAdminModelCopy, n.peersOnly(n.handleModelCopy))
	mux.HandleFunc("POST "+api.PathAdminModelPull, n.peersOnly(n.handleModelPull))
	mux.HandleFunc("DELETE "+api.PathAdminModels+"/{model}", n.peersOnly(n.handleModelRemove))
	mux.HandleFunc("GET "+api.PathHiveFiles+"/{model}/{path...}", n.peersOnly(n.handleModelFile))
	// Metrics name models, hives and traffic: they read the cluster.
	mux.Handle("GET /metrics", n.authorized(promhttp.HandlerFor(n.metrics, promhttp.HandlerOpts{Registry: n.metrics}).ServeHTTP))
	if n.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", n.peersOnly(pprof.Index))
		mux.HandleFunc("GET /debug/pprof/profile", n.peersOnly(pprof.Profile))
		mux.HandleFunc("GET /debug/pprof/trace", n.peersOnly(pprof.Trace))
	}
	dash := ui.Handler()
	mux.Handle("GET /{$}", dash)
	mux.Handle("GET /ui/", dash)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		proxy.WriteError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// apiAuthorized checks a client of the OpenAI API: with --api-key set, a
// bearer key from that list (or the cluster token); without, the rules of
// the admin API (cluster token, or loopback when allowed).
func (n *Node) apiAuthorized(h http.HandlerFunc) http.HandlerFunc {
	if len(n.cfg.APIKeys) == 0 && n.keys == nil {
		return n.authorized(h)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if n.keys != nil {
			if t := n.keys.Table().Lookup(tok); t != nil {
				markAuthenticated(r)
				h(w, r.WithContext(proxy.WithTenant(r.Context(), t)))
				return
			}
		}
		ok := tok != "" && n.cfg.Key.CheckToken(tok)
		for _, k := range n.cfg.APIKeys {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(k)) == 1 {
				ok = true
			}
		}
		if !ok {
			n.proxy.Fail(w, r, "", http.StatusUnauthorized, "invalid_api_key", "missing or wrong API key (send Authorization: Bearer <key>)")
			return
		}
		markAuthenticated(r)
		h(w, r)
	}
}

// inferenceAuthorized is apiAuthorized for inference, except that where a
// keys file is in force the cluster token is not an API key: it has no
// tenant, so its requests would escape every cap and model list and be
// booked to no one. The token still reads the cluster and lists its models;
// nodes never send inference with it (entry nodes reach hives over the
// cluster's TLS, at /v1/hive/proxy).
func (n *Node) inferenceAuthorized(h http.HandlerFunc) http.HandlerFunc {
	next := n.apiAuthorized(h)
	if n.keys == nil {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if tok != "" && n.cfg.Key.CheckToken(tok) && n.keys.Table().Lookup(tok) == nil {
			n.proxy.Fail(w, r, "", http.StatusUnauthorized, "invalid_api_key",
				"the cluster token is not an API key: this node takes inference only with a key from its --api-keys-file (send Authorization: Bearer <key>)")
			return
		}
		next(w, r)
	}
}

// authorized guards what reads the cluster (its view, the feed, the member
// list): another node or the CLI over the cluster's mutual TLS, the cluster's
// HTTP token (as a bearer token or, for browsers' WebSockets which cannot set
// headers, a token query parameter), or the local rules below.
func (n *Node) authorized(h http.HandlerFunc) http.HandlerFunc { return n.guard(h, true) }

// peersOnly guards what changes the cluster or reaches its workers (join,
// leave, worker registration, the hive's proxy to its workers, the
// profiler): another node or the CLI over the cluster's mutual TLS, or the
// local rules. The HTTP token, which every API client and dashboard carries,
// is not enough: one leaked token must not let anyone steer the cluster.
func (n *Node) peersOnly(h http.HandlerFunc) http.HandlerFunc { return n.guard(h, false) }

// guard lets a cluster peer through, then (when tokenOK) a request with the
// HTTP token; without either, a request passes only when no key is set or it
// comes from loopback (the machine's own users, as with `consul join`).
//
// Such a request must also not come from another site's page in the user's
// browser: without that, any web page could POST /v1/admin/leave to
// 127.0.0.1 or read the feed. So its Origin, when a browser sends one, must be
// this node itself, and a loopback request must name the host by IP address
// or "localhost", which defeats DNS rebinding (evil.example resolving to
// 127.0.0.1 makes Origin and Host agree).
func (n *Node) guard(h http.HandlerFunc, tokenOK bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n.isPeer(r) {
			h(w, r)
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			tok = r.URL.Query().Get("token")
		}
		if tokenOK && tok != "" && n.cfg.Key.CheckToken(tok) {
			markAuthenticated(r)
			h(w, r)
			return
		}
		loopback := fromLoopback(r)
		if !n.cfg.Key.IsZero() && !loopback {
			msg := "missing or wrong cluster token (the CLI derives it from --cluster-key-file)"
			if !tokenOK {
				msg = "only cluster members may call this from another machine: use the CLI with --cluster-key-file, which connects over the cluster's TLS"
			}
			proxy.WriteError(w, http.StatusUnauthorized, "unauthorized", msg)
			return
		}
		// A page of --cors-origins may read and use the API as any
		// local client; changing the cluster stays with the key.
		if err := notFromAnotherSite(r, loopback, n.isMemberHTTP); err != nil && !(tokenOK && fromAllowedOrigin(r)) {
			proxy.WriteError(w, http.StatusForbidden, "forbidden", err.Error())
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" && w.Header().Get("Access-Control-Allow-Origin") == "" {
			// A dashboard served by another member reads this node
			// after its own node died: let its page see the answer.
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Add("Vary", "Origin")
		}
		// Trusted by the local rules (loopback, or no key at all):
		// as good as a key for the connection cap.
		markAuthenticated(r)
		h(w, r)
	}
}

// sessionsOverTLS refuses node sessions from other machines that do not use
// the cluster's TLS: the session's own handshake proves the key, but what
// follows (telemetry, lease messages) would cross the network readable.
func (n *Node) sessionsOverTLS(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !n.cfg.Key.IsZero() && r.TLS == nil && !fromLoopback(r) {
			proxy.WriteError(w, http.StatusForbidden, "tls_required", "sessions from other machines must use the cluster's TLS (wss://)")
			return
		}
		h(w, r)
	}
}

// isMemberHTTP reports whether host:port is a cluster member's API: a
// dashboard served by one node reads the feed of another after a failover.
func (n *Node) isMemberHTTP(hostport string) bool {
	for _, m := range n.gossip.Members() {
		if m.HTTPAddr == hostport {
			return true
		}
	}
	return false
}

// isMemberIP reports whether ip is a live member's (its API or gossip
// address).
func (n *Node) isMemberIP(ip net.IP) bool {
	for _, m := range n.gossip.LiveMembers() {
		for _, a := range []string{m.HTTPAddr, m.GossipAddr} {
			if h, _, err := net.SplitHostPort(a); err == nil && ip.Equal(net.ParseIP(h)) {
				return true
			}
		}
	}
	return false
}

func notFromAnotherSite(r *http.Request, loopback bool, member func(hostport string) bool) error {
	if loopback {
		host := r.Host
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			host = h
		}
		if host != "localhost" && net.ParseIP(strings.Trim(host, "[]")) == nil {
			return fmt.Errorf("host %q: without the cluster token, call this node by IP address or localhost", proxy.TruncateText(r.Host, 60))
		}
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || (u.Host != r.Host && !member(u.Host)) {
			return fmt.Errorf("cross-site request from %q refused without the cluster token", proxy.TruncateText(origin, 60))
		}
	}
	return nil
}

// fromLoopback reports whether r comes from this machine's own users. A
// request that a reverse proxy on this machine (nginx, Caddy terminating TLS)
// passed on also arrives from loopback, but for a client anywhere: the
// headers such proxies add mark it as from elsewhere.
func fromLoopback(r *http.Request) bool {
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"} {
		if r.Header.Get(h) != "" {
			return false
		}
	}
	return isLoopbackRemote(r.RemoteAddr)
}

func isLoopbackRemote(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (n *Node) handleHealth(w http.ResponseWriter, r *http.Request) {
	q, ok := n.Queen()
	proxy.WriteJSON(w, api.Health{Status: "ok", Node: n.cfg.Name, Queen: queenName(q, ok), Version: Version,
		GossipAddr: n.GossipAddr()})
}

func queenName(q gossip.Member, ok bool) string {
	if !ok {
		return ""
	}
	return q.Name
}

func (n *Node) handleFeed(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := n.feedContext(r)
	defer cancel()
	if err := wsapi.ServeFeed(ctx, w, r, n.hub, nil); err != nil {
		n.log.Info("feed reader dropped", "remote", r.RemoteAddr, "err", err)
	}
}

func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody)).Decode(&req); err != nil {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
		return
	}
	if len(req.Addrs) == 0 {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "addrs: at least one host:port")
		return
	}
	joined, err := n.gossip.Join(seedsWithPort(req.Addrs))
	if err != nil {
		proxy.WriteError(w, http.StatusBadGateway, "join_failed", err.Error())
		return
	}
	n.log.Info("joined on request", "addrs", req.Addrs, "contacted", joined)
	proxy.WriteJSON(w, api.JoinResult{Joined: joined})
}

// maxLeaveDrain bounds a drain asked for over the API: long enough for a
// long generation, short enough that a typo does not keep a node up for days.
const maxLeaveDrain = time.Hour

func (n *Node) handleLeave(w http.ResponseWriter, r *http.Request) {
	var req api.LeaveRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
		return
	}
	drain := time.Duration(req.DrainMS) * time.Millisecond
	if drain < 0 || drain > maxLeaveDrain {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("drain_ms: between 0 and %d", maxLeaveDrain.Milliseconds()))
		return
	}
	n.log.Info("leave requested", "remote", r.RemoteAddr, "drain", drain)
	// The answer goes onto the wire whole before the leave starts: with no
	// drain, shutdown closes every connection at once, this one included,
	// and a response still buffered in the server reached the caller as EOF.
	body, _ := json.MarshalIndent(api.LeaveResult{Leaving: true, Node: n.cfg.Name}, "", "  ")
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Connection", "close")
	_, _ = w.Write(body)
	_ = http.NewResponseController(w).Flush()
	n.requestLeave(drain)
}

func (n *Node) handleMembers(w http.ResponseWriter, r *http.Request) {
	members, _ := n.memberViews()
	proxy.WriteJSON(w, members)
}

func (n *Node) handleRegisterWorker(w http.ResponseWriter, r *http.Request) {
	if n.hive == nil || !n.hive.TakesRegistrations() {
		proxy.WriteError(w, http.StatusConflict, "not_a_hive", "this node reports no workers (start it with the hive role)")
		return
	}
	var req api.WorkerRegistration
	if err := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody)).Decode(&req); err != nil {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
		return
	}
	for _, f := range []struct{ name, v string }{{"group", req.Group}, {"instance", req.Instance}} {
		if err := wsapi.ValidName(f.v); err != nil {
			proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", f.name+": "+err.Error())
			return
		}
	}
	if req.PID <= 0 || req.Slots < 0 || len(req.Model) > 512 {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "pid must be positive, slots not negative, model at most 512 bytes")
		return
	}
	if err := n.hive.RegisterWorker(req.Group, req.Instance, req.PID, req.Model, req.Slots); err != nil {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", err.Error())
		return
	}
	n.log.Info("worker registered", "group", req.Group, "instance", req.Instance, "pid", req.PID, "model", req.Model)
	proxy.WriteJSON(w, api.WorkerRegistered{Registered: true})
}
