package gossip

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/mdns"
)

// MDNSService is the DNS-SD service type rbee nodes announce.
const MDNSService = "_rbee._tcp"

// mdnsRound is how long one browse listens for answers: a LAN answers in
// milliseconds, and a responder may delay up to 120 ms (RFC 6762 6.).
const mdnsRound = time.Second

// MDNS is Discovery by multicast DNS on the local network (RFC 6762, with
// DNS-SD service type _rbee._tcp). What a node announces reveals nothing of
// the cluster or the machine: a random instance name, the cluster id
// (ClusterID, in the TXT record c=), and its gossip address and port. A node
// joins only the announcements carrying its own cluster id, and could not
// join any other: gossip is encrypted with the cluster key.
//
// It answers and asks on the interface holding the node's gossip address
// (its multicast group membership and its outgoing queries), so a machine
// with several networks announces itself only where its peers can reach it.
// Several nodes on one machine each answer: the mDNS port is shared
// (SO_REUSEADDR, as Go opens multicast listeners), and every listener gets
// every query.
type MDNS struct {
	id       string
	instance string
	log      *slog.Logger

	mu     sync.Mutex
	iface  *net.Interface
	server *mdns.Server
	closed bool
}

// NewMDNS returns the discovery of the cluster whose id is clusterID
// (ClusterID of its gossip secret). Nothing is sent until Announce.
func NewMDNS(clusterID string, log *slog.Logger) (*MDNS, error) {
	if clusterID == "" {
		return nil, errors.New("discovery needs a cluster key: the cluster id announced is derived from it")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("mdns instance name: %w", err)
	}
	return &MDNS{id: clusterID, instance: "rbee-" + hex.EncodeToString(b), log: log}, nil
}

// Announce answers queries for _rbee._tcp with addr, on the interface that
// holds addr's IP.
func (m *MDNS) Announce(addr string) error {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("announce %q: %w", addr, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return fmt.Errorf("announce %q: bad port", addr)
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("announce %q: not an IP address", addr)
	}
	iface, err := interfaceOf(ip)
	if err != nil {
		return err
	}
	// The host name is the instance name: the default, the machine's
	// name, would tell every listener which machine runs rbee.
	svc, err := mdns.NewMDNSService(m.instance, MDNSService, "local.", m.instance+".local.", port, []net.IP{ip}, []string{"v=1", "c=" + m.id})
	if err != nil {
		return fmt.Errorf("mdns service: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("discovery closed")
	}
	srv, err := mdns.NewServer(&mdns.Config{Zone: svc, Iface: iface, Logger: slog.NewLogLogger(m.log.Handler(), slog.LevelDebug)})
	if err != nil {
		return fmt.Errorf("mdns on %s: %w", iface.Name, err)
	}
	if m.server != nil {
		_ = m.server.Shutdown()
	}
	m.server, m.iface = srv, iface
	return nil
}

// interfaceOf is the interface that holds ip, which must do multicast.
func interfaceOf(ip net.IP) (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for i := range ifs {
		addrs, err := ifs[i].Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				if ifs[i].Flags&net.FlagMulticast == 0 || ifs[i].Flags&net.FlagUp == 0 {
					return nil, fmt.Errorf("interface %s of %s is down or does not do multicast (loopback does not): discovery needs a LAN address (--gossip-addr or --advertise-addr), or use --join", ifs[i].Name, ip)
				}
				return &ifs[i], nil
			}
		}
	}
	return nil, fmt.Errorf("no interface holds %s (a NAT or container address?): give --join, or --discover off", ip)
}

// Browse sends one query and collects the answers of this cluster's nodes
// for one round.
func (m *MDNS) Browse(ctx context.Context) ([]string, error) {
	m.mu.Lock()
	iface := m.iface
	m.mu.Unlock()
	if iface == nil {
		return nil, errors.New("not announcing yet: no interface to ask on")
	}
	// The library drops answers when the channel is full rather than
	// block; this holds a large LAN's worth.
	entries := make(chan *mdns.ServiceEntry, 1024)
	err := mdns.QueryContext(ctx, &mdns.QueryParam{
		Service:   MDNSService,
		Domain:    "local",
		Timeout:   mdnsRound,
		Interface: iface,
		Entries:   entries,
		// Gossip addresses are IPv4 here, and a query to ff02::fb on
		// a host without an IPv6 route fails the whole query.
		DisableIPv6: true,
		Logger:      slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
	})
	// QueryContext has returned: nothing sends on entries any more.
	close(entries)
	var out []string
	for e := range entries {
		if e.AddrV4 == nil || e.Port == 0 || !hasField(e.InfoFields, "c="+m.id) {
			continue
		}
		out = append(out, net.JoinHostPort(e.AddrV4.String(), strconv.Itoa(e.Port)))
	}
	if err != nil {
		return out, fmt.Errorf("mdns query on %s: %w", iface.Name, err)
	}
	return out, nil
}

func hasField(fields []string, want string) bool {
	for _, f := range fields {
		if f == want {
			return true
		}
	}
	return false
}

// Close stops answering.
func (m *MDNS) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	if m.server == nil {
		return nil
	}
	err := m.server.Shutdown()
	m.server = nil
	return err
}
