package main

// Discovery on a LAN: nodes in network namespaces on one bridge (which
// carries multicast, as a switch does), started with a cluster key and no
// --join, find each other by multicast DNS.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/netlab"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// lanHost adds a namespace: a machine on a LAN with no default route, nor
// one for multicast (an isolated GPU network), which discovery must do
// without.
func lanHost(nc *netCluster, name string) *netlab.Host {
	nc.tb.Helper()
	return nc.host(name)
}

// discoverNode launches `rbee node run` in h with keyFile and no --join;
// the caller waits for it.
func (nc *netCluster) discoverNode(h *netlab.Host, keyFile string, extra ...string) *proc {
	nc.tb.Helper()
	p := &proc{name: h.Name, gossipAddr: h.Addr(netGossipPort), httpAddr: h.Addr(netHTTPPort)}
	args := append([]string{"node", "run", "--name", h.Name, "--gossip-addr", p.gossipAddr, "--http-addr", p.httpAddr,
		"--cluster-key-file", keyFile, "--log-level", nc.logLvl}, extra...)
	if err := nc.launch(p, h.Command(rbeeBin, args...)); err != nil {
		nc.tb.Fatal(err)
	}
	return p
}

// membersWithKey is p's live member names, asked with key's token.
func membersWithKey(hc *http.Client, p *proc, key wsapi.Key) ([]string, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+p.httpAddr+api.PathAdminMembers, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key.HTTPToken())
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: members: %s", p.name, resp.Status)
	}
	var ms []api.MemberView
	if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.Status == "alive" {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// formByDiscovery starts three nodes with one key and no --join on one LAN
// and returns them, with the time from their launch to one cluster (every
// node sees the three alive) with one queen.
func formByDiscovery(tb testing.TB, nc *netCluster) ([]*proc, []*netlab.Host, time.Duration) {
	tb.Helper()
	var hosts []*netlab.Host
	for _, name := range []string{"a", "b", "c"} {
		hosts = append(hosts, lanHost(nc, name))
	}
	start := time.Now()
	var ps []*proc
	for _, h := range hosts {
		ps = append(ps, nc.discoverNode(h, nc.keyFile))
	}
	nc.waitConverged(ps, 20*time.Second)
	return ps, hosts, time.Since(start)
}

// TestFault_DiscoveryFormsOneCluster: three nodes with one key and no --join
// form one cluster with one queen; a fourth with another key on the same LAN
// stays alone, and none of the three sees it; the announcements on the wire
// hold the cluster id and nothing of the key; a node killed and started
// again later is found again, and so is a second node on one machine.
func TestFault_DiscoveryFormsOneCluster(t *testing.T) {
	nc := newNetCluster(t)
	ps, hosts, took := formByDiscovery(t, nc)
	t.Logf("three nodes with no --join: one cluster with one queen %v after launch", took.Round(time.Millisecond))
	for _, p := range ps {
		if !strings.Contains(p.log(), "discovery: announcing this node") {
			t.Errorf("%s does not say it announces itself:\n%s", p.name, tail(p.log(), 4<<10))
		}
	}

	capture := nc.lab.Capture()
	otherFile, otherKey := nc.keygen("other-key")
	x := nc.discoverNode(lanHost(nc, "x"), otherFile)
	testutil.Every(50*time.Millisecond).Eventually(t, 15*time.Second, "x answers", func() error {
		_, err := membersWithKey(nc.hc, x, otherKey)
		return err
	})
	// Several discovery rounds on both sides: the first of x's, and the
	// three's later ones (1 s, 2 s apart).
	testutil.Every(100*time.Millisecond).Consistently(t, 4*time.Second, "x stays alone and unseen", func() error {
		got, err := membersWithKey(nc.hc, x, otherKey)
		if err != nil {
			return err
		}
		if !slices.Equal(got, []string{"x"}) {
			return fmt.Errorf("x sees %v", got)
		}
		for _, p := range ps {
			got, err := membersWithKey(nc.hc, p, nc.key)
			if err != nil {
				return err
			}
			if slices.Contains(got, "x") {
				return fmt.Errorf("%s sees x: %v", p.name, got)
			}
		}
		return nil
	})
	if h, err := healthWithKey(nc.hc, x, otherKey); err != nil || h.Queen != "x" {
		t.Fatalf("x alone should be its own queen: %+v, %v", h, err)
	}
	// What the nodes announced meanwhile: their cluster's id, and
	// nothing of the key or this machine.
	wire := capture.Stop()
	id := gossip.ClusterID(nc.key.GossipSecret())
	if !bytes.Contains(wire, []byte("c="+id)) || !bytes.Contains(wire, []byte("_rbee")) {
		t.Fatalf("the capture holds no announcement of the cluster (%d bytes): it proves nothing", len(wire))
	}
	secrets := map[string][]byte{"the key": []byte(nc.key.String()), "the token": []byte(nc.key.HTTPToken()),
		"the gossip secret": nc.key.GossipSecret(), "the other key's token": []byte(otherKey.HTTPToken())}
	if host, err := os.Hostname(); err == nil && len(host) >= 4 {
		secrets["the machine's name"] = []byte(host)
	}
	for what, b := range secrets {
		if bytes.Contains(wire, b) {
			t.Errorf("%s crossed the wire in the announcements", what)
		}
	}

	// b dies; a and c see it gone; b starts again, still with no --join.
	b := byName(t, ps, "b")
	nc.kill(b)
	b.stopped = true
	testutil.Every(50*time.Millisecond).Eventually(t, 15*time.Second, "a and c see b gone", func() error {
		for _, p := range nc.live(ps) {
			got, err := membersWithKey(nc.hc, p, nc.key)
			if err != nil {
				return err
			}
			if slices.Contains(got, "b") {
				return fmt.Errorf("%s still sees b: %v", p.name, got)
			}
		}
		return nil
	})
	b2 := nc.discoverNode(hosts[1], nc.keyFile)
	restarted := append(nc.live(ps), b2)
	nc.waitConverged(restarted, 20*time.Second)

	// A second node on a's machine, on other ports: both answer mDNS
	// on the shared port.
	a2 := &proc{name: "a2", gossipAddr: hosts[0].Addr(netGossipPort + 1), httpAddr: hosts[0].Addr(netHTTPPort + 1)}
	if err := nc.launch(a2, hosts[0].Command(rbeeBin, "node", "run", "--name", "a2", "--gossip-addr", a2.gossipAddr,
		"--http-addr", a2.httpAddr, "--cluster-key-file", nc.keyFile, "--log-level", nc.logLvl)); err != nil {
		t.Fatal(err)
	}
	nc.waitConverged(append(restarted, a2), 20*time.Second)
}

// healthWithKey is p's /healthz, asked with key's token.
func healthWithKey(hc *http.Client, p *proc, key wsapi.Key) (api.Health, error) {
	var h api.Health
	req, err := http.NewRequest(http.MethodGet, "http://"+p.httpAddr+api.PathHealth, nil)
	if err != nil {
		return h, err
	}
	req.Header.Set("Authorization", "Bearer "+key.HTTPToken())
	resp, err := hc.Do(req)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return h, errors.New(resp.Status)
	}
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// discoverTrials is how many fresh three-node LANs BenchmarkDiscoveryFormation
// forms.
const discoverTrials = 10

// BenchmarkDiscoveryFormation measures, over fresh namespaces and processes
// each trial, the time from launching three nodes with one key and no --join
// to one cluster with one queen (every node sees the three alive and names
// the same queen).
//
//	go test -run '^$' -bench DiscoveryFormation -benchtime 1x ./cmd/rbee/
func BenchmarkDiscoveryFormation(b *testing.B) {
	var took []time.Duration
	for b.Loop() {
		for range discoverTrials {
			nc := newNetCluster(b)
			_, _, d := formByDiscovery(b, nc)
			took = append(took, d)
			nc.close()
		}
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	p50, worst := took[len(took)/2], took[len(took)-1]
	b.ReportMetric(p50.Seconds(), "p50_s")
	b.ReportMetric(worst.Seconds(), "max_s")
	b.Logf("three nodes, no --join, to one cluster with one queen over %d trials: p50 %v, max %v (all: %v)",
		len(took), p50.Round(time.Millisecond), worst.Round(time.Millisecond), took)
}
