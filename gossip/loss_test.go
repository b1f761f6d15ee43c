package gossip

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestLog_PacketLossDoesNotFloodWarn: at 20% packet loss (UDP lost, TCP
// retransmitted) memberlist's failed probes and refuted suspicions repeat
// every probe round; an operator gets each kind at most once a minute per
// node, not a stream of warnings. Members declared failed are events, each
// logged, and only counted here.
func TestLog_PacketLossDoesNotFloodWarn(t *testing.T) {
	const window = 20 * time.Second // under symptomQuiet: one line per kind
	nodes, lt, mark := slowCluster(t, LANTiming(), 0, 0.2)
	<-time.After(window) // a fixed window to count in, not a wait for a condition
	warns := lt.since(mark, func(r tallied) bool { return r.level >= slog.LevelWarn })
	infos := lt.since(mark, func(r tallied) bool { return r.level == slog.LevelInfo })
	quieted := lt.since(mark, func(r tallied) bool { return r.level == slog.LevelDebug && symptomOf(r.msg) != "" })
	perMin := func(n int) float64 { return float64(n) * float64(time.Minute) / float64(window) / float64(len(nodes)) }
	t.Logf("20%% loss, 5 members, %v: %d WARN lines (%.1f per node a minute), by node %v; %d INFO lines (%.1f per node a minute); %d repeats at debug",
		window, len(warns), perMin(len(warns)), byNode(warns, nodes), len(infos), perMin(len(infos)), len(quieted))
	for _, m := range byMessage(append(warns, infos...)) {
		t.Log(m)
	}

	// Kinds by their first words ("Failed fallback TCP", "Was able to"),
	// whatever peer or error follows.
	seen := map[string]bool{}
	for _, r := range warns {
		if r.msg == "member failed" {
			continue
		}
		kind := r.node + ": " + strings.Join(strings.Fields(r.msg)[:min(3, len(strings.Fields(r.msg)))], " ")
		if seen[kind] {
			t.Errorf("%s: warned more than once in %v", kind, window)
		}
		seen[kind] = true
	}
	if len(quieted) == 0 {
		t.Errorf("no repeated symptom at 20%% loss in %v: the network was not lossy", window)
	}
}
