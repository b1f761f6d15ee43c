package node

import (
	"encoding/json"
	"net/http"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node/proxy"
)

// ready says whether the node can serve the cluster's API now, and why
// not: a node with no queen, or whose queen does not know the cluster yet,
// would hold its requests until one does. /healthz says only that the
// process lives.
func (n *Node) ready() (bool, string) {
	q, ok := n.Queen()
	switch {
	case !ok:
		return false, "no queen elected"
	case q.Name == n.cfg.Name && !n.queen.Warm():
		return false, "this node is queen and has not heard from every hive yet"
	case q.Name != n.cfg.Name && (n.proxy == nil || !n.proxy.Leases().Attached()):
		return false, "no session to the queen " + q.Name + " yet"
	case n.cfg.hasRole(gossip.RoleHive) && !n.reported.Load():
		return false, "this hive's first report has not reached the queen yet"
	}
	return true, ""
}

// handleReady answers GET /readyz: 200 when ready, else 503 with why (a
// Kubernetes readiness probe, a load balancer's check).
func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) {
	ok, why := n.ready()
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "not ready", "node": n.cfg.Name, "reason": why})
		return
	}
	proxy.WriteJSON(w, map[string]string{"status": "ready", "node": n.cfg.Name})
}
