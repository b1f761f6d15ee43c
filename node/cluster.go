package node

// The cluster view: /v1/cluster on every node, and the queues the data plane
// lists as /v1/models. Only the queen holds hives and queues; other nodes ask
// it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/node/queen"
	"github.com/rbee/rbee/wsapi"
)

// HiveView is one hive in /v1/cluster.
type HiveView = queen.HiveView

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
		v.Hives = n.queen.Registry().Hives(now)
		v.Queues, v.RequestsPerS = n.queen.Queues(now)
	case r.Header.Get(hdrAskedByNode) != "":
		// Two nodes that each think the other is queen (gossip has
		// not settled) would otherwise ask each other in a loop.
		v.HivesError = fmt.Sprintf("asked as queen, but this node sees %s as queen", q.Name)
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
	proxy.WriteJSON(w, v)
}

// hdrAskedByNode marks a node asking the queen for its view.
const hdrAskedByNode = "X-Rbee-Asked-By"

// queenCluster asks the queen for its view: only the queen has the hives and
// queues.
func (n *Node) queenCluster(ctx context.Context, addr string) (*ClusterView, error) {
	var v ClusterView
	if err := n.askQueen(ctx, addr, PathCluster, &v); err != nil {
		return nil, err
	}
	if v.Hives == nil {
		v.Hives = []HiveView{}
	}
	return &v, nil
}

// askQueen GETs path (with its query) from the queen at addr into out, as
// this node: what only the queen holds (the cluster view, usage).
func (n *Node) askQueen(ctx context.Context, addr, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url(addr, path, false), nil)
	if err != nil {
		return err
	}
	req.Header.Set(hdrAskedByNode, n.cfg.Name)
	resp, err := n.hc.Do(req)
	if err != nil {
		return fmt.Errorf("ask queen %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ask queen %s: %s", addr, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("ask queen %s: %w", addr, err)
	}
	return nil
}

// clusterQueues is the node as the data plane sees it: the queen's queues.
type clusterQueues Node

// Queues returns the queen's per-model state, asking the queen when this node
// is not it.
func (c *clusterQueues) Queues(ctx context.Context) ([]wsapi.QueueStats, error) {
	n := (*Node)(c)
	q, ok := n.Queen()
	switch {
	case !ok:
		return nil, errors.New("no queen elected")
	case q.Name == n.cfg.Name:
		qs, _ := n.queen.Queues(time.Now())
		return qs, nil
	}
	v, err := n.queenCluster(ctx, q.HTTPAddr)
	if err != nil {
		return nil, err
	}
	return v.Queues, nil
}
