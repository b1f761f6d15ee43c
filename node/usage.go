package node

// Usage accounting as the node serves it: GET /v1/usage on every node (the
// queen sums every node's buckets; other nodes ask it, as for /v1/cluster),
// and the usage reports this node sends the queen on its session.

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/node/usage"
	"github.com/rbee/rbee/wsapi"
)

// PathUsage is the cluster's token usage by API key and model.
const PathUsage = "/v1/usage"

// usageInterval is how often a node sends the queen its changed buckets:
// often enough that `rbee usage` is seconds behind, and a queen that dies
// loses no more than that of what it was not sent again anyway.
const usageInterval = 2 * time.Second

// UsageView is the /v1/usage document.
type UsageView struct {
	// Node is the node asked, Queen the one that summed.
	Node  string `json:"node"`
	Queen string `json:"queen"`
	// SinceS is the span asked for, in seconds; the rows cover it
	// rounded out to whole ten-minute buckets.
	SinceS int64       `json:"since_s"`
	Rows   []usage.Row `json:"rows"`
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
		proxy.WriteJSON(w, UsageView{Node: n.cfg.Name, Queen: q.Name, SinceS: int64(since / time.Second),
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
func (n *Node) queenUsage(ctx context.Context, addr string, since time.Duration) (*UsageView, error) {
	var v UsageView
	if err := n.askQueen(ctx, addr, PathUsage+"?since="+url.QueryEscape(since.String()), &v); err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	if v.Rows == nil {
		v.Rows = []usage.Row{}
	}
	return &v, nil
}

// sendUsage sends the queen this node's usage on session s: every bucket
// when *at is zero (a new session, so a new queen rebuilds the cluster's
// usage), then the changed ones every usageInterval.
func (n *Node) sendUsage(ctx context.Context, s *wsapi.Session, at *time.Time) error {
	now := time.Now()
	full := at.IsZero()
	if !full && now.Sub(*at) < usageInterval {
		return nil
	}
	*at = now
	for _, m := range n.usage.Report(n.start, full, now) {
		if err := s.Write(ctx, m); err != nil {
			return fmt.Errorf("send usage: %w", err)
		}
	}
	return nil
}

// Usage asks the node for the cluster's usage over the last since.
func (c *Client) Usage(ctx context.Context, since time.Duration) (*UsageView, error) {
	var v UsageView
	if err := c.do(ctx, http.MethodGet, PathUsage+"?since="+url.QueryEscape(since.String()), nil, &v); err != nil {
		return nil, err
	}
	return &v, nil
}
