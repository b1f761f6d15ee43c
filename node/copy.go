package node

import (
	"context"
	"fmt"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/models"
	"github.com/rbee/rbee/node/hive/transfer"
	"github.com/rbee/rbee/wsapi"
)

// modelPeers lists the base URLs of the online hives other than this node
// whose catalog has model ready to start (its files there), as the queen
// knows them, and the first one's catalog entry.
func (n *Node) modelPeers(ctx context.Context, model string) ([]string, wsapi.CatalogEntry, error) {
	var src wsapi.CatalogEntry
	q, ok := n.Queen()
	if !ok {
		return nil, src, fmt.Errorf("no queen elected: cannot tell which hives hold %s", model)
	}
	var hives []api.HiveView
	if q.Name == n.cfg.Name {
		hives = n.queen.Registry().Hives(time.Now())
	} else {
		v, err := n.queenCluster(ctx, q.HTTPAddr)
		if err != nil {
			return nil, src, fmt.Errorf("which hives hold %s: %w", model, err)
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
			// A file of some size is there to copy, whether or
			// not that hive can run it.
			if e.Name == model && e.Bytes > 0 {
				if len(out) == 0 {
					src = e
				}
				out = append(out, n.url(addrs[h.HiveID], "", false))
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, src, fmt.Errorf("no other online hive has %s in its catalog", model)
	}
	return out, src, nil
}

// copyModel copies model from the hives that hold it into this hive's
// models folder, over the cluster's TLS, at most --transfer-rate, and adds
// it to the catalog as the hive it came from serves it.
func (n *Node) copyModel(ctx context.Context, model string, progress func(transfer.Progress)) (transfer.Result, error) {
	dir := n.hive.ModelsDir()
	if dir == "" {
		return transfer.Result{}, models.ErrNoModelsDir
	}
	peers, src, err := n.modelPeers(ctx, model)
	if err != nil {
		return transfer.Result{}, err
	}
	n.log.Info("copying a model from its hives", "model", model, "from", peers, "into", dir)
	start := time.Now()
	res, err := transfer.Copy(ctx, model, dir, transfer.Options{Client: n.hc, Peers: peers, Rate: n.cfg.TransferRate,
		Progress: progress, Gone: n.peerGone, Logger: n.log})
	if err != nil {
		return res, err
	}
	if err := n.hive.AddCopied(model, res.Path, src.Engine, src.Slots, src.Ctx); err != nil {
		return res, err
	}
	n.log.Info("model copied", "model", model, "path", res.Path, "bytes", res.Bytes, "fetched", res.Fetched,
		"took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// copyFrom copies model from the named hives into this hive's models
// folder, for a start the queen placed here (models.Config.CopyModel).
func (n *Node) copyFrom(ctx context.Context, model string, from []string, progress func(done, total int64, rate float64)) (string, error) {
	if n.cfg.Models == nil || n.cfg.Models.ModelsDir == "" {
		return "", models.ErrNoModelsDir
	}
	addrs := map[string]string{}
	for _, m := range n.gossip.Members() {
		if m.Status == gossip.StatusAlive {
			addrs[m.Name] = m.HTTPAddr
		}
	}
	var peers []string
	for _, h := range from {
		if a := addrs[h]; a != "" && h != n.cfg.Name {
			peers = append(peers, n.url(a, "", false))
		}
	}
	if len(peers) == 0 {
		return "", fmt.Errorf("none of %v is a live member", from)
	}
	res, err := transfer.Copy(ctx, model, n.cfg.Models.ModelsDir, transfer.Options{Client: n.hc, Peers: peers, Rate: n.cfg.TransferRate,
		Progress: func(p transfer.Progress) { progress(p.Done, p.Total, p.Rate) }, Gone: n.peerGone, Logger: n.log})
	return res.Path, err
}

// peerGone is closed once the cluster declares the member whose API is at
// base dead (never, for an address no member has).
func (n *Node) peerGone(base string) <-chan struct{} {
	for _, m := range n.gossip.Members() {
		if n.url(m.HTTPAddr, "", false) == base {
			return n.gossip.WatchMember(m.Name)
		}
	}
	return make(chan struct{})
}
