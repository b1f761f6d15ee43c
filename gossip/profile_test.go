package gossip

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/internal/testutil"
)

func TestProfileTiming(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Timing
		err  error
	}{
		{"lan", LANTiming(), nil},
		{"wan", WANTiming(), nil},
		{"", Timing{}, ErrUnknownProfile},
		{"LAN", Timing{}, ErrUnknownProfile},
		{"metro", Timing{}, ErrUnknownProfile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ProfileTiming(tc.name)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil && !strings.Contains(err.Error(), `"`+tc.name+`"`) {
				t.Errorf("error %q does not name the profile given", err)
			}
			if got != tc.want {
				t.Errorf("timing %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestTiming_Detection checks the figures against memberlist's own formulas:
// suspicion = SuspicionMult * max(1, log10(n)) * ProbeInterval, up to
// SuspicionMaxTimeoutMult times that when confirmations are expected, which
// needs n-2 >= SuspicionMult-2.
func TestTiming_Detection(t *testing.T) {
	for _, tc := range []struct {
		name   string
		timing Timing
		n      int
		want   Detection
	}{
		{"lan, 3 members", LANTiming(), 3, Detection{
			ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond,
			SuspicionMin: 600 * time.Millisecond, SuspicionMax: 1800 * time.Millisecond,
			Expected: time.Second, Worst: 2200 * time.Millisecond,
		}},
		{"lan, 100 members: suspicion doubles", LANTiming(), 100, Detection{
			ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond,
			SuspicionMin: 1200 * time.Millisecond, SuspicionMax: 3600 * time.Millisecond,
			Expected: 1600 * time.Millisecond, Worst: 4000 * time.Millisecond,
		}},
		{"wan, 5 members: too few to confirm", WANTiming(), 5, Detection{
			ProbeInterval: 5 * time.Second, ProbeTimeout: 3 * time.Second,
			SuspicionMin: 30 * time.Second, SuspicionMax: 30 * time.Second,
			Expected: 40 * time.Second, Worst: 40 * time.Second,
		}},
		{"wan, 10 members", WANTiming(), 10, Detection{
			ProbeInterval: 5 * time.Second, ProbeTimeout: 3 * time.Second,
			SuspicionMin: 30 * time.Second, SuspicionMax: 180 * time.Second,
			Expected: 40 * time.Second, Worst: 190 * time.Second,
		}},
		{"zero timing is lan", Timing{}, 3, LANTiming().Detection(3)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.timing.Detection(tc.n); got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// roundTrip400 is the round trip a tester measured false deaths at: 200 ms
// each way.
const roundTrip400 = 200 * time.Millisecond

// slowCluster starts five members with timing on a fast network, waits until
// they all see each other, then slows every link to delay each way with the
// given packet loss. The tally's mark is where the slow network starts.
func slowCluster(t *testing.T, timing Timing, delay time.Duration, loss float64) ([]*testNode, *logTally, int) {
	t.Helper()
	// A probe waits out its whole interval, which memberlist stretches up
	// to 8 times on a node that finds itself slow, even after shutdown:
	// the package's leak check would count it.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		testutil.Eventually(t, max(waitFor, 10*timing.ProbeInterval), "memberlist's last probes end", func() error { return goleak.Find(before) })
	})
	sn := &slowNet{}
	c := newCluster(t)
	lt := withTally(c)
	nodes := c.startN(5, onSlowNet(t, sn), func(cfg *Config) { cfg.Timing = timing })
	mark := lt.mark()
	sn.set(delay, loss)
	return nodes, lt, mark
}

// isFalseDeath is a member declared failed (every observer logs its own).
func isFalseDeath(r tallied) bool { return r.msg == "member failed" }

// isSuspicion is a failed probe that made a member suspect (memberlist's
// line, at debug).
func isSuspicion(r tallied) bool {
	return strings.HasPrefix(r.msg, "Suspect ") && strings.Contains(r.msg, "has failed")
}

// TestGossipProfile_WANHasNoFalseDeathsAt400msRTT: with every link at a
// 400 ms round trip, no member is even suspected under WANTiming over several
// of its probe rounds (each member probes about every 5 s), so none is
// declared dead. A timing whose probes cannot finish in a round trip fails at
// its first probe.
func TestGossipProfile_WANHasNoFalseDeathsAt400msRTT(t *testing.T) {
	const window = 16 * time.Second // three probe rounds of every member
	nodes, lt, mark := slowCluster(t, WANTiming(), roundTrip400, 0)
	rtt := pingRTT(t, nodes[0], nodes[1])
	if rtt < 2*roundTrip400 {
		t.Fatalf("ping round trip %v: the network is not slowed to %v", rtt, 2*roundTrip400)
	}
	testutil.Consistently(t, window, "no member suspected at a 400 ms round trip", func() error {
		if bad := lt.since(mark, func(r tallied) bool { return isFalseDeath(r) || isSuspicion(r) }); len(bad) > 0 {
			return fmt.Errorf("%s: %s (and %d more)", bad[0].node, bad[0].msg, len(bad)-1)
		}
		return nil
	})
	t.Logf("wan at %v RTT (ping %v), 5 members, %v: 0 suspicions, 0 false deaths", 2*roundTrip400, rtt.Round(time.Millisecond), window)
	waitLive(t, []string{"n1", "n2", "n3", "n4", "n5"}, nodes...)
}

// pingRTT is a memberlist ping's round trip from one node to another.
func pingRTT(t *testing.T, from, to *testNode) time.Duration {
	t.Helper()
	addr, err := net.ResolveUDPAddr("udp", to.addr())
	if err != nil {
		t.Fatal(err)
	}
	rtt, err := from.ml.Ping(to.name, addr)
	if err != nil {
		t.Fatalf("ping %s from %s: %v", to.name, from.name, err)
	}
	return rtt
}

// TestGossipProfile_LANFalseDeathsAt400msRTT measures what the tester saw:
// LANTiming's 100 ms probe timeout is a quarter of the round trip, so every
// direct probe fails and members are suspected and declared dead all the
// time. It asserts they are suspected (the reason WANTiming exists) and
// reports the deaths.
func TestGossipProfile_LANFalseDeathsAt400msRTT(t *testing.T) {
	const window = 15 * time.Second
	nodes, lt, mark := slowCluster(t, LANTiming(), roundTrip400, 0)
	<-time.After(window) // a fixed window to count in, not a wait for a condition
	deaths := lt.since(mark, isFalseDeath)
	suspicions := lt.since(mark, isSuspicion)
	t.Logf("lan at 400 ms RTT, 5 members, %v: %d suspicions, %d false deaths (member failed lines, all observers) = %.0f a minute; per observer %v",
		window, len(suspicions), len(deaths), float64(len(deaths))*float64(time.Minute)/float64(window), byNode(deaths, nodes))
	if len(suspicions) == 0 {
		t.Errorf("no member suspected in %v with a 100 ms probe timeout and a 400 ms round trip", window)
	}
}
