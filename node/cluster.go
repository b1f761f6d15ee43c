package node

// What only the queen holds, as every node serves it: /v1/cluster, /v1/usage
// (the cluster's token usage, summed by the queen from every node's reports)
// and the queues the data plane lists as /v1/models. Other nodes ask the
// queen.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/node/usage"
	"github.com/rbee/rbee/wsapi"
)

func (n *Node) memberViews() ([]api.MemberView, string) {
	q, ok := n.Queen()
	qn := queenName(q, ok)
	ms := n.gossip.Members()
	out := make([]api.MemberView, 0, len(ms))
	for _, m := range ms {
		roles := m.Roles
		if roles == nil {
			roles = []string{}
		}
		out = append(out, api.MemberView{Name: m.Name, GossipAddr: m.GossipAddr, HTTPAddr: m.HTTPAddr, Roles: roles,
			Status: string(m.Status), Queen: m.Name == qn, Priority: m.Priority, Version: m.Version, Revision: m.Revision})
	}
	return out, qn
}

func (n *Node) handleCluster(w http.ResponseWriter, r *http.Request) {
	members, qn := n.memberViews()
	v := api.ClusterView{Node: n.cfg.Name, Queen: qn, Members: members, Hives: []api.HiveView{}}
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

// parseSince reads ?since= (a Go duration; default and at most 24h).
func parseSince(r *http.Request) (time.Duration, error) {
	s := r.URL.Query().Get("since")
	if s == "" {
		return usage.Window, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("since %q: want a positive duration such as 1h or 30m", proxy.TruncateText(s, 40))
	}
	return min(d, usage.Window), nil
}

func (n *Node) handleUsage(w http.ResponseWriter, r *http.Request) {
	since, err := parseSince(r)
	if err != nil {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", err.Error())
		return
	}
	q, ok := n.Queen()
	switch {
	case !ok:
		proxy.WriteError(w, http.StatusServiceUnavailable, "no_queen", "no queen elected")
	case q.Name == n.cfg.Name:
		now := time.Now()
		proxy.WriteJSON(w, api.UsageView{Node: n.cfg.Name, Queen: q.Name, SinceS: int64(since / time.Second),
			Rows: usage.Sum(n.queen.UsageBuckets(now), since, now)})
	case r.Header.Get(hdrAskedByNode) != "":
		// Two nodes that each think the other is queen would ask each
		// other in a loop.
		proxy.WriteError(w, http.StatusServiceUnavailable, "no_queen",
			fmt.Sprintf("asked as queen, but this node sees %s as queen", q.Name))
	default:
		v, err := n.queenUsage(r.Context(), q.HTTPAddr, since)
		if err != nil {
			proxy.WriteError(w, http.StatusBadGateway, "no_queen", err.Error())
			return
		}
		v.Node = n.cfg.Name
		proxy.WriteJSON(w, v)
	}
}

// queenUsage asks the queen for the cluster's usage.
func (n *Node) queenUsage(ctx context.Context, addr string, since time.Duration) (*api.UsageView, error) {
	var v api.UsageView
	if err := n.askQueen(ctx, addr, api.PathUsage+"?since="+url.QueryEscape(since.String()), &v); err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	if v.Rows == nil {
		v.Rows = []wsapi.UsageRow{}
	}
	return &v, nil
}

// hdrAskedByNode marks a node asking the queen for its view.
const hdrAskedByNode = "X-Rbee-Asked-By"

// queenCluster asks the queen for its view: only the queen has the hives and
// queues.
func (n *Node) queenCluster(ctx context.Context, addr string) (*api.ClusterView, error) {
	var v api.ClusterView
	if err := n.askQueen(ctx, addr, api.PathCluster, &v); err != nil {
		return nil, err
	}
	if v.Hives == nil {
		v.Hives = []api.HiveView{}
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
