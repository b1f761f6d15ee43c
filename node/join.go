package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/rbee/rbee/node/api"
)

// seedsWithPort gives each join address without a port the default gossip
// port. memberlist would take its own port instead, which on a machine
// running one node means the node joins itself and reports success.
func seedsWithPort(addrs []string) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(a, strconv.Itoa(api.DefaultGossipPort))
		}
		out = append(out, a)
	}
	return out
}

// explainJoin looks at an address a join failed at: when an rbee node's API
// answers there, the user gave its HTTP port where the gossip port belongs
// (memberlist reports that as "received invalid msgType (72)", the 'H' of
// "HTTP/1.1").
func (n *Node) explainJoin(addr string) string {
	// A one-off diagnosis of an address that already failed: generous,
	// so a busy machine still gets the hint.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url(addr, api.PathHealth, false), nil)
	if err != nil {
		return ""
	}
	resp, err := n.hc.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var h struct {
		Node       string `json:"node"`
		GossipAddr string `json:"gossip_addr"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&h) != nil || h.Node == "" {
		return fmt.Sprintf("%s answers HTTP: it is not a gossip port", addr)
	}
	if h.GossipAddr == "" {
		return fmt.Sprintf("%s is the HTTP API of rbee node %q, not its gossip port (--gossip-addr, %d by default)", addr, h.Node, api.DefaultGossipPort)
	}
	return fmt.Sprintf("%s is the HTTP API of rbee node %q: join its gossip address, %s", addr, h.Node, h.GossipAddr)
}
