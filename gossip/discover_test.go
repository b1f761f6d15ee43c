package gossip

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"

	"github.com/rbee/rbee/internal/testutil"
)

// fakeLAN stands in for multicast DNS in process (loopback carries no
// multicast): every Discovery on it hears the announcements of its cluster
// id, and only those, as MDNS filters on the TXT record.
type fakeLAN struct {
	mu  sync.Mutex
	ann map[string]map[string]bool // cluster id -> announced addresses
}

func newFakeLAN() *fakeLAN { return &fakeLAN{ann: map[string]map[string]bool{}} }

// discovery is one node's view of the LAN; deaf ones announce but hear
// nothing, so only the others' rounds can find them.
func (l *fakeLAN) discovery(id string, deaf bool) *fakeDiscovery {
	return &fakeDiscovery{lan: l, id: id, deaf: deaf}
}

type fakeDiscovery struct {
	lan  *fakeLAN
	id   string
	deaf bool
	addr string
}

func (d *fakeDiscovery) Announce(addr string) error {
	d.lan.mu.Lock()
	defer d.lan.mu.Unlock()
	if d.lan.ann[d.id] == nil {
		d.lan.ann[d.id] = map[string]bool{}
	}
	d.lan.ann[d.id][addr] = true
	d.addr = addr
	return nil
}

func (d *fakeDiscovery) Browse(ctx context.Context) ([]string, error) {
	if d.deaf {
		return nil, nil
	}
	d.lan.mu.Lock()
	defer d.lan.mu.Unlock()
	var out []string
	for a := range d.lan.ann[d.id] {
		out = append(out, a)
	}
	return out, ctx.Err()
}

func (d *fakeDiscovery) Close() error {
	d.lan.mu.Lock()
	defer d.lan.mu.Unlock()
	delete(d.lan.ann[d.id], d.addr)
	return nil
}

func withDiscovery(d Discovery) nodeOption {
	return func(c *Config) {
		c.Discovery = d
		// Rounds every 200 ms after the first, so that a test sees
		// the "keeps running" rounds within its wait.
		c.DiscoverInterval = 200 * time.Millisecond
	}
}

func TestClusterID(t *testing.T) {
	a, b := newSecret(t), newSecret(t)
	ida, idb := ClusterID(a), ClusterID(b)
	if ida != ClusterID(slices.Clone(a)) {
		t.Fatal("the same secret gives different ids")
	}
	if ida == idb {
		t.Fatal("two secrets give one id")
	}
	raw, err := hex.DecodeString(ida)
	if err != nil || len(raw) != 16 {
		t.Fatalf("id %q: want 16 bytes of hex, err %v", ida, err)
	}
	// Nothing of the secret shows: no 4-byte run of it is in the id.
	for i := 0; i+4 <= len(a); i++ {
		if bytes.Contains(raw, a[i:i+4]) {
			t.Fatalf("id %s holds bytes %x of the secret", ida, a[i:i+4])
		}
	}
	if ClusterID(nil) != "" {
		t.Fatal("no secret must give no id (no discovery)")
	}
}

// TestDiscovery_NoSeedsFormOneCluster: three nodes with one key and no seeds
// find each other and elect one queen; a fourth with another key, on the
// same network, stays alone and unseen.
func TestDiscovery_NoSeedsFormOneCluster(t *testing.T) {
	lan := newFakeLAN()
	c := newCluster(t)
	id := ClusterID(c.secret)
	var nodes []*testNode
	for _, name := range []string{"a", "b", "c"} {
		nodes = append(nodes, c.start(name, nil, withDiscovery(lan.discovery(id, false))))
	}
	other := newSecret(t)
	stranger := c.start("x", nil, withSecret(other), withDiscovery(lan.discovery(ClusterID(other), false)))

	waitLive(t, []string{"a", "b", "c"}, nodes...)
	testutil.Eventually(t, waitFor, "one queen for a, b and c", func() error {
		_, err := agreedQueen(nodes...)
		return err
	})
	waitQueen(t, "x", stranger) // alone, it is its own queen
	// It stays alone while the others run rounds (every 200 ms).
	testutil.Consistently(t, quiet, "x stays alone", func() error {
		if got := liveNames(stranger); !slices.Equal(got, []string{"x"}) {
			return errors.New("x sees " + strings.Join(got, ","))
		}
		for _, n := range nodes {
			if slices.Contains(liveNames(n), "x") {
				return errors.New(n.name + " sees x")
			}
		}
		return nil
	})
}

// TestDiscovery_KeepsFindingLateNodes: discovery keeps running after the
// cluster formed. A node that announces but hears no one (its query lost,
// say) and has no seeds is still found, by the others' later rounds.
func TestDiscovery_KeepsFindingLateNodes(t *testing.T) {
	lan := newFakeLAN()
	c := newCluster(t)
	id := ClusterID(c.secret)
	a := c.start("a", nil, withDiscovery(lan.discovery(id, false)))
	b := c.start("b", nil, withDiscovery(lan.discovery(id, false)))
	waitLive(t, []string{"a", "b"}, a, b)

	late := c.start("late", nil, withDiscovery(lan.discovery(id, true)))
	waitLive(t, []string{"a", "b", "late"}, a, b, late)
}

// TestDiscovery_LeaveStopsAnnouncing: a node that leaves is no longer
// announced, so the members that dropped it do not join it again.
func TestDiscovery_LeaveStopsAnnouncing(t *testing.T) {
	lan := newFakeLAN()
	c := newCluster(t)
	id := ClusterID(c.secret)
	a := c.start("a", nil, withDiscovery(lan.discovery(id, false)))
	b := c.start("b", nil, withDiscovery(lan.discovery(id, false)))
	waitLive(t, []string{"a", "b"}, a, b)
	if got := lan.announced(id); len(got) != 2 {
		t.Fatalf("announced %v, want both", got)
	}
	if err := b.Leave(); err != nil {
		t.Fatal(err)
	}
	if got := lan.announced(id); !slices.Equal(got, []string{a.addr()}) {
		t.Fatalf("after b left, announced %v, want only a's %s", got, a.addr())
	}
	waitLive(t, []string{"a"}, a)
	testutil.Consistently(t, quiet, "a does not take b back", func() error {
		if got := liveNames(a); !slices.Equal(got, []string{"a"}) {
			return errors.New("a sees " + strings.Join(got, ","))
		}
		return nil
	})
}

func (l *fakeLAN) announced(id string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for a := range l.ann[id] {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// TestDiscovery_WaitsForFirstRound: a node with discovery and no seeds claims
// no queen seat before its first round, so that it joins the peers it hears
// instead of racing them for the seat.
func TestDiscovery_WaitsForFirstRound(t *testing.T) {
	c := newCluster(t)
	held := &heldDiscovery{release: make(chan struct{})}
	n := c.start("a", nil, withDiscovery(held))
	testutil.Consistently(t, quiet, "no queen before the first round", func() error {
		if q := n.queen(); q != "" {
			return errors.New("queen " + q)
		}
		return nil
	})
	close(held.release)
	waitQueen(t, "a", n)
}

// heldDiscovery's first Browse returns only once released.
type heldDiscovery struct {
	release chan struct{}
}

func (h *heldDiscovery) Announce(string) error { return nil }
func (h *heldDiscovery) Close() error          { return nil }
func (h *heldDiscovery) Browse(ctx context.Context) ([]string, error) {
	select {
	case <-h.release:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestMDNSAnswersReadTheResponder: what the library's responder answers a
// browse with is read back into gossip addresses, and only for the cluster
// id asked about.
func TestMDNSAnswersReadTheResponder(t *testing.T) {
	var ans answers
	for i, id := range []string{"aaaa", "bbbb", "aaaa"} {
		inst := "rbee-" + strconv.Itoa(i)
		svc, err := mdns.NewMDNSService(inst, MDNSService, "local.", inst+".local.", 7946+i,
			[]net.IP{net.IPv4(10, 0, 0, byte(1+i))}, []string{"v=1", "c=" + id})
		if err != nil {
			t.Fatal(err)
		}
		ans.add(svc.Records(dns.Question{Name: MDNSService + ".local.", Qtype: dns.TypePTR, Qclass: dns.ClassINET}))
	}
	got := ans.addrs("c=aaaa")
	slices.Sort(got)
	if want := []string{"10.0.0.1:7946", "10.0.0.3:7948"}; !slices.Equal(got, want) {
		t.Fatalf("addrs %v, want %v", got, want)
	}
	if got := ans.addrs("c=cccc"); len(got) != 0 {
		t.Fatalf("another cluster's id matched %v", got)
	}
}
