package gossip

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
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
// with several networks announces itself only where its peers can reach it,
// and needs no route for multicast.
// Several nodes on one machine each answer: the mDNS port is shared
// (SO_REUSEADDR, as Go opens multicast listeners), and every listener gets
// every query.
type MDNS struct {
	id       string
	instance string
	log      *slog.Logger

	mu     sync.Mutex
	iface  *net.Interface
	ip     net.IP // the announced address, which queries leave from
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
	m.server, m.iface, m.ip = srv, iface, ip
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
//
// The query is this package's, not the library's: the library's client also
// joins the mDNS group on the default interface, which fails on a LAN with
// no default route (an isolated GPU network), though the answers never come
// that way. Here the query leaves from the node's own address on its
// interface (IP_MULTICAST_IF: no route needed), from an ephemeral port, so
// every responder answers it by unicast (RFC 6762 6.7, and the library's
// responder always does).
func (m *MDNS) Browse(ctx context.Context) ([]string, error) {
	m.mu.Lock()
	iface, ip := m.iface, m.ip
	m.mu.Unlock()
	if iface == nil {
		return nil, errors.New("not announcing yet: no interface to ask on")
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, fmt.Errorf("mdns query socket: %w", err)
	}
	defer conn.Close()
	pc := ipv4.NewPacketConn(conn)
	if err := pc.SetMulticastInterface(iface); err != nil {
		return nil, fmt.Errorf("mdns query on %s: %w", iface.Name, err)
	}
	// RFC 6762 11: mDNS packets go out with TTL 255.
	_ = pc.SetMulticastTTL(255)
	q := new(dns.Msg)
	q.SetQuestion(MDNSService+".local.", dns.TypePTR)
	q.RecursionDesired = false
	q.Question[0].Qclass |= 1 << 15 // QU: answer by unicast
	buf, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("mdns query: %w", err)
	}
	if _, err := conn.WriteToUDP(buf, mdnsGroup); err != nil {
		return nil, fmt.Errorf("mdns query on %s: %w", iface.Name, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(mdnsRound))
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	var ans answers
	rb := make([]byte, 65536)
	for {
		n, _, err := conn.ReadFromUDP(rb)
		if err != nil {
			break // the round's deadline, or ctx
		}
		var msg dns.Msg
		if msg.Unpack(rb[:n]) != nil || !msg.Response {
			continue
		}
		ans.add(append(msg.Answer, msg.Extra...))
	}
	return ans.addrs("c=" + m.id), ctx.Err()
}

// mdnsGroup is mDNS's IPv4 group and port.
var mdnsGroup = &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}

// answers gathers the records of a browse's responses, which may come split
// over several packets.
type answers struct {
	srv map[string]*dns.SRV // by instance name
	txt map[string][]string // by instance name
	a   map[string]net.IP   // by host name
}

func (a *answers) add(rrs []dns.RR) {
	if a.srv == nil {
		a.srv, a.txt, a.a = map[string]*dns.SRV{}, map[string][]string{}, map[string]net.IP{}
	}
	for _, rr := range rrs {
		switch r := rr.(type) {
		case *dns.SRV:
			a.srv[strings.ToLower(r.Hdr.Name)] = r
		case *dns.TXT:
			a.txt[strings.ToLower(r.Hdr.Name)] = r.Txt
		case *dns.A:
			a.a[strings.ToLower(r.Hdr.Name)] = r.A
		}
	}
}

// addrs are the gossip addresses of the instances whose TXT record holds
// field.
func (a *answers) addrs(field string) []string {
	var out []string
	for name, srv := range a.srv {
		ip := a.a[strings.ToLower(srv.Target)]
		if ip == nil || srv.Port == 0 || !slices.Contains(a.txt[name], field) {
			continue
		}
		out = append(out, net.JoinHostPort(ip.String(), strconv.Itoa(int(srv.Port))))
	}
	return out
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
