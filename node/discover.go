package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/rbee/rbee/gossip"
)

// Discovery modes (Config.Discover).
const (
	// DiscoverAuto is DiscoverMDNS for a node with a cluster key and no
	// Join, DiscoverOff otherwise: the three-machine LAN needs no
	// addresses, and a node told whom to join (a Kubernetes headless
	// Service, a WAN) sends no multicast.
	DiscoverAuto = "auto"
	// DiscoverMDNS announces the node by multicast DNS and joins the
	// members of its cluster it hears, besides any Join.
	DiscoverMDNS = "mdns"
	// DiscoverOff (or "") sends and hears no announcements.
	DiscoverOff = "off"
)

// discoverMode resolves DiscoverAuto. A node whose gossip address is on
// loopback has no one to find (loopback carries no multicast): tests and
// single-machine setups.
func (c Config) discoverMode() (string, error) {
	switch c.Discover {
	case "", DiscoverOff:
		return DiscoverOff, nil
	case DiscoverAuto:
		if !c.Key.IsZero() && len(c.Join) == 0 && !onLoopback(c.GossipAddr) && !onLoopback(c.AdvertiseAddr) {
			return DiscoverMDNS, nil
		}
		return DiscoverOff, nil
	case DiscoverMDNS:
		if c.Key.IsZero() {
			return "", errors.New("--discover mdns needs a cluster key: what a node announces is an id derived from it, and without one any stranger could join")
		}
		return DiscoverMDNS, nil
	}
	return "", fmt.Errorf("--discover %q: want auto, mdns or off", c.Discover)
}

// discovery is the gossip Discovery the configuration asks for, nil for
// none.
func (c Config) discovery(log *slog.Logger) (gossip.Discovery, error) {
	mode, err := c.discoverMode()
	if err != nil || mode == DiscoverOff {
		return nil, err
	}
	return gossip.NewMDNS(gossip.ClusterID(c.Key.GossipSecret()), log.With("component", "discovery"))
}

// discoverLogged is the discovery mode in force, for the start log.
func (n *Node) discoverLogged() string {
	mode, _ := n.cfg.discoverMode() // New refused a bad one
	return mode
}

// onLoopback reports whether addr (host:port) names a loopback host.
func onLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
