package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strings"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/ui"
	"github.com/rbee/rbee/wsapi"
)

// HTTP paths served by every node besides the feed and hive session.
const (
	PathHealth       = "/healthz"
	PathCluster      = "/v1/cluster"
	PathAdminJoin    = "/v1/admin/join"
	PathAdminLeave   = "/v1/admin/leave"
	PathAdminMembers = "/v1/admin/members"
	PathAdminWorkers = "/v1/admin/workers"
)

// maxAdminBody bounds admin request bodies: a join list of a few addresses.
const maxAdminBody = 64 << 10

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealth, n.handleHealth)
	mux.HandleFunc("GET "+PathCluster, n.authorized(n.handleCluster))
	mux.HandleFunc("GET "+wsapi.FeedPath, n.authorized(n.handleFeed))
	// The hive session authenticates with its own challenge-response.
	mux.HandleFunc("GET "+wsapi.SessionPath, n.handleSession)
	mux.HandleFunc("POST "+PathAdminJoin, n.authorized(n.handleJoin))
	mux.HandleFunc("POST "+PathAdminLeave, n.authorized(n.handleLeave))
	mux.HandleFunc("GET "+PathAdminMembers, n.authorized(n.handleMembers))
	mux.HandleFunc("POST "+PathAdminWorkers, n.authorized(n.handleRegisterWorker))
	mux.HandleFunc("POST "+PathChat, n.apiAuthorized(n.handleInference))
	mux.HandleFunc("POST "+PathCompletions, n.apiAuthorized(n.handleInference))
	mux.HandleFunc("POST "+PathEmbeddings, n.apiAuthorized(n.handleInference))
	mux.HandleFunc("GET "+PathModels, n.apiAuthorized(n.handleModels))
	mux.HandleFunc("GET "+PathModels+"/{model...}", n.apiAuthorized(n.handleModel))
	mux.HandleFunc("POST "+PathHiveProxy+"/", n.authorized(n.handleHiveProxy))
	mux.Handle("GET /metrics", n.metrics.handler())
	if n.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", n.authorized(pprof.Index))
		mux.HandleFunc("GET /debug/pprof/profile", n.authorized(pprof.Profile))
		mux.HandleFunc("GET /debug/pprof/trace", n.authorized(pprof.Trace))
	}
	dash := ui.Handler()
	mux.Handle("GET /{$}", dash)
	mux.Handle("GET /ui/", dash)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// authorized lets a request through when it carries the cluster's HTTP token
// (as a bearer token or, for browsers' WebSockets which cannot set headers, a
// token query parameter), or, without a token, when no key is set or it comes
// from loopback (the machine's own users, as with `consul join`).
//
// A token-less request must also not come from another site's page in the
// user's browser: without that, any web page could POST /v1/admin/leave to
// 127.0.0.1 or read the feed. So its Origin, when a browser sends one, must be
// this node itself, and a loopback request must name the host by IP address
// or "localhost", which defeats DNS rebinding (evil.example resolving to
// 127.0.0.1 makes Origin and Host agree).
func (n *Node) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			tok = r.URL.Query().Get("token")
		}
		if tok != "" && n.cfg.Key.CheckToken(tok) {
			h(w, r)
			return
		}
		loopback := isLoopbackRemote(r.RemoteAddr)
		if !n.cfg.Key.IsZero() && !loopback {
			WriteError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong cluster token (the CLI derives it from --cluster-key-file)")
			return
		}
		if err := notFromAnotherSite(r, loopback, n.isMemberHTTP); err != nil {
			WriteError(w, http.StatusForbidden, "forbidden", err.Error())
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" {
			// A dashboard served by another member reads this node
			// after its own node died: let its page see the answer.
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Add("Vary", "Origin")
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

func notFromAnotherSite(r *http.Request, loopback bool, member func(hostport string) bool) error {
	if loopback {
		host := r.Host
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			host = h
		}
		if host != "localhost" && net.ParseIP(strings.Trim(host, "[]")) == nil {
			return fmt.Errorf("host %q: without the cluster token, call this node by IP address or localhost", truncateText(r.Host, 60))
		}
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || (u.Host != r.Host && !member(u.Host)) {
			return fmt.Errorf("cross-site request from %q refused without the cluster token", truncateText(origin, 60))
		}
	}
	return nil
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func isLoopbackRemote(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// WriteError writes an error in the OpenAI error shape, which every OpenAI
// client already knows how to show.
func WriteError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": nil},
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (n *Node) handleHealth(w http.ResponseWriter, r *http.Request) {
	q, ok := n.Queen()
	writeJSON(w, map[string]any{"status": "ok", "node": n.cfg.Name, "queen": queenName(q, ok), "version": Version})
}

func queenName(q gossip.Member, ok bool) string {
	if !ok {
		return ""
	}
	return q.Name
}

// MemberView is one member in /v1/cluster and /v1/admin/members.
type MemberView struct {
	Name       string   `json:"name"`
	GossipAddr string   `json:"gossip_addr"`
	HTTPAddr   string   `json:"http_addr"`
	Roles      []string `json:"roles"`
	Status     string   `json:"status"`
	Queen      bool     `json:"queen"`
	Priority   int      `json:"queen_priority"`
	Version    string   `json:"version"`
}

// ClusterView is the /v1/cluster document.
type ClusterView struct {
	Node    string       `json:"node"`
	Queen   string       `json:"queen"`
	Members []MemberView `json:"members"`
	Hives   []HiveView   `json:"hives"`
	// HivesError says why hives is empty on a node that could not ask the
	// queen.
	HivesError string `json:"hives_error,omitempty"`
	// Queues is each model's waiting requests, leases and slots;
	// RequestsPerS the leases granted per second lately (both from the
	// queen).
	Queues       []wsapi.QueueStats `json:"queues"`
	RequestsPerS float64            `json:"requests_per_s"`
}

func (n *Node) memberViews() ([]MemberView, string) {
	q, ok := n.Queen()
	qn := queenName(q, ok)
	ms := n.gossip.Members()
	out := make([]MemberView, 0, len(ms))
	for _, m := range ms {
		roles := m.Roles
		if roles == nil {
			roles = []string{}
		}
		out = append(out, MemberView{Name: m.Name, GossipAddr: m.GossipAddr, HTTPAddr: m.HTTPAddr, Roles: roles,
			Status: string(m.Status), Queen: m.Name == qn, Priority: m.Priority, Version: m.Version})
	}
	return out, qn
}

func (n *Node) handleCluster(w http.ResponseWriter, r *http.Request) {
	members, qn := n.memberViews()
	v := ClusterView{Node: n.cfg.Name, Queen: qn, Members: members, Hives: []HiveView{}}
	q, ok := n.Queen()
	switch {
	case !ok:
		v.HivesError = "no queen elected"
	case q.Name == n.cfg.Name:
		now := time.Now()
		v.Hives = n.registry.Hives(now)
		v.Queues, v.RequestsPerS = n.queueStats(now)
	default:
		qv, err := n.queenCluster(r.Context(), q.HTTPAddr)
		if err != nil {
			v.HivesError = err.Error()
		} else {
			v.Hives, v.Queues, v.RequestsPerS = qv.Hives, qv.Queues, qv.RequestsPerS
		}
	}
	if v.Queues == nil {
		v.Queues = []wsapi.QueueStats{}
	}
	writeJSON(w, v)
}

// queenCluster asks the queen for its view: only the queen has the hives and
// queues.
func (n *Node) queenCluster(ctx context.Context, addr string) (*ClusterView, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+PathCluster, nil)
	if err != nil {
		return nil, err
	}
	if tok := n.cfg.Key.HTTPToken(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := n.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask queen %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("ask queen %s: %s", addr, resp.Status)
	}
	var v ClusterView
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&v); err != nil {
		return nil, fmt.Errorf("ask queen %s: %w", addr, err)
	}
	if v.Hives == nil {
		v.Hives = []HiveView{}
	}
	return &v, nil
}

func (n *Node) handleFeed(w http.ResponseWriter, r *http.Request) {
	n.conns.Add(1)
	defer n.conns.Done()
	if err := wsapi.ServeFeed(r.Context(), w, r, n.hub, nil); err != nil {
		n.log.Info("feed reader dropped", "remote", r.RemoteAddr, "err", err)
	}
}

// JoinRequest is the body of POST /v1/admin/join.
type JoinRequest struct {
	Addrs []string `json:"addrs"`
}

func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody)).Decode(&req); err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
		return
	}
	if len(req.Addrs) == 0 {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", "addrs: at least one host:port")
		return
	}
	joined, err := n.gossip.Join(req.Addrs)
	if err != nil {
		WriteError(w, http.StatusBadGateway, "join_failed", err.Error())
		return
	}
	n.log.Info("joined on request", "addrs", req.Addrs, "contacted", joined)
	writeJSON(w, map[string]any{"joined": joined})
}

func (n *Node) handleLeave(w http.ResponseWriter, r *http.Request) {
	n.log.Info("leave requested", "remote", r.RemoteAddr)
	writeJSON(w, map[string]any{"leaving": true, "node": n.cfg.Name})
	n.Leave()
}

func (n *Node) handleMembers(w http.ResponseWriter, r *http.Request) {
	members, _ := n.memberViews()
	writeJSON(w, members)
}

// WorkerRegistration is the body of POST /v1/admin/workers.
type WorkerRegistration struct {
	Group    string `json:"group"`
	Instance string `json:"instance"`
	PID      int32  `json:"pid"`
	Model    string `json:"model,omitempty"`
	Slots    int    `json:"slots,omitempty"`
}

func (n *Node) handleRegisterWorker(w http.ResponseWriter, r *http.Request) {
	reg, ok := n.cfg.Collector.(WorkerRegistrar)
	if !ok || !n.cfg.hasRole(gossip.RoleHive) {
		WriteError(w, http.StatusConflict, "not_a_hive", "this node reports no workers (start it with the hive role)")
		return
	}
	var req WorkerRegistration
	if err := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody)).Decode(&req); err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
		return
	}
	for _, f := range []struct{ name, v string }{{"group", req.Group}, {"instance", req.Instance}} {
		if err := wsapi.ValidName(f.v); err != nil {
			WriteError(w, http.StatusBadRequest, "invalid_request_error", f.name+": "+err.Error())
			return
		}
	}
	if req.PID <= 0 || req.Slots < 0 || len(req.Model) > 512 {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", "pid must be positive, slots not negative, model at most 512 bytes")
		return
	}
	if err := reg.RegisterWorker(req.Group, req.Instance, req.PID, req.Model, req.Slots); err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_request_error", err.Error())
		return
	}
	n.log.Info("worker registered", "group", req.Group, "instance", req.Instance, "pid", req.PID, "model", req.Model)
	writeJSON(w, map[string]any{"registered": true})
}
