package node

import (
	"context"
	"fmt"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/transfer"
)

// modelPeers lists the base URLs of the online hives other than this node
// whose catalog has model ready to start (its files there), as the queen
// knows them.
func (n *Node) modelPeers(ctx context.Context, model string) ([]string, error) {
	q, ok := n.Queen()
	if !ok {
		return nil, fmt.Errorf("no queen elected: cannot tell which hives hold %s", model)
	}
	var hives []api.HiveView
	if q.Name == n.cfg.Name {
		hives = n.queen.Registry().Hives(time.Now())
	} else {
		v, err := n.queenCluster(ctx, q.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("which hives hold %s: %w", model, err)
		}
		hives = v.Hives
	}
	addrs := map[string]string{}
	for _, m := range n.gossip.Members() {
		if m.Status == gossip.StatusAlive {
			addrs[m.Name] = m.HTTPAddr
		}
	}
	var out []string
	for _, h := range hives {
		if !h.Online || h.HiveID == n.cfg.Name || addrs[h.HiveID] == "" {
			continue
		}
		for _, e := range h.Catalog {
			if e.Name == model && e.Unavailable == "" && !e.Simulated {
				out = append(out, n.url(addrs[h.HiveID], "", false))
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no other online hive has %s in its catalog", model)
	}
	return out, nil
}

// copyModel copies model from the hives that hold it into dir, over the
// cluster's TLS, at most --transfer-rate.
func (n *Node) copyModel(ctx context.Context, model, dir string, progress func(transfer.Progress)) (transfer.Result, error) {
	peers, err := n.modelPeers(ctx, model)
	if err != nil {
		return transfer.Result{}, err
	}
	n.log.Info("copying a model from its hives", "model", model, "from", peers, "into", dir)
	return transfer.Copy(ctx, model, dir, transfer.Options{Client: n.hc, Peers: peers, Rate: n.cfg.TransferRate,
		Progress: progress, Logger: n.log})
}
