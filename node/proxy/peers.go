package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"time"
)

// hdrRelayedBy marks a request an entry node passed to a peer because it
// could not reach the queen (it names that node). The peer serves it as its
// own entry request but never passes it on again, so a request crosses at
// most one extra hop and cannot loop between stranded nodes.
const hdrRelayedBy = "X-Rbee-Relayed-By"

// maxRelayPeers bounds how many peers one request is offered to.
const maxRelayPeers = 3

// relayToPeer serves a request this node cannot lease for (it cannot reach
// the queen while the others can) through a peer, which asks its own queen
// session: a node with a broken path to the queen keeps serving its clients
// instead of holding them for the queue timeout. It reports whether the
// client has had an answer; false leaves the client to the caller (no peer
// took the request, nothing was written).
func (p *Proxy) relayToPeer(w http.ResponseWriter, r *http.Request, a *admission) bool {
	if p.cfg.Peers == nil || r.Header.Get(hdrRelayedBy) != "" {
		return false
	}
	peers := p.cfg.Peers()
	for i, addr := range peers {
		if i == maxRelayPeers {
			break
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, p.cfg.Scheme+"://"+addr+r.URL.RequestURI(), bytes.NewReader(a.clientBody))
		if err != nil {
			return false
		}
		relayHeaders(req.Header, r.Header)
		p.injectTrace(r.Context(), req.Header) // trace.go
		req.Header.Set(hdrRelayedBy, p.cfg.Name)
		resp, err := p.hops.RoundTrip(req)
		if err != nil {
			if r.Context().Err() != nil {
				p.metrics.requests.WithLabelValues(keyLabel(r), p.labels.of(a.model), "499").Inc()
				return true
			}
			p.log.Debug("peer unreachable for a relayed request", "peer", addr, "err", err)
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(hdrRetry) != "" {
			// That peer cannot reach the queen either.
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			continue
		}
		p.log.Debug("request relayed through a peer that reaches the queen", "peer", addr, "model", a.model)
		// The peer is the request's entry node: it counts it and books
		// its usage, so this node copies the answer as a hop does.
		p.copyResponse(w, r, resp, a.model, time.Now(), nil)
		resp.Body.Close()
		return true
	}
	return false
}

// relayHeaders passes on everything the client sent but hop-by-hop headers
// and rbee's own: the peer authenticates the client's key itself, and the
// worker sees the request as it would have through this node.
func relayHeaders(dst, src http.Header) {
	for k, vs := range src {
		if hopHeader[k] || (strings.HasPrefix(k, "X-Rbee-") && k != hdrMigrate) || k == "Content-Length" {
			continue
		}
		dst[k] = vs
	}
}
