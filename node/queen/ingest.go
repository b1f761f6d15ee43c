package queen

import (
	"errors"
	"fmt"
	"time"

	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// Errors Ingest returns for a heartbeat it does not take.
var (
	// ErrNotQueen: this node is not queen (any more); the heartbeat
	// belongs to the queen.
	ErrNotQueen = errors.New("not queen")
	// ErrHiveIsNode: the heartbeat names an rbee node of this cluster,
	// whose own session reports for it.
	ErrHiveIsNode = errors.New("hive name belongs to an rbee node")
)

// heartbeatOnly is the state reason of every worker of a hive known only
// from heartbeats.
const heartbeatOnly = "reported by POST /v1/hive-heartbeat only: rbee routes no requests to it"

// Ingest takes one heartbeat of a hive that posts its telemetry (the seed's
// hives: POST /v1/hive-heartbeat) instead of keeping an rbee session. It is
// validated as a session's telemetry is, recorded in the registry and
// published on the feed as a session's report is, so the hive is online while
// it posts within the hive TTL and shows in the feed, /v1/cluster, the
// metrics and the dashboard.
//
// Its workers are not given to the scheduler: such a hive runs no rbee hive
// proxy and keeps no lease table, so nothing could serve a lease on them. The
// queen marks each one unavailable, whatever its load (saturated, or failing
// when it is), with a reason saying so; leases it lists are dropped.
//
// A heartbeat naming a live rbee node, or a node with a session here, is
// refused with ErrHiveIsNode: that node's session is what reports for it.
func (q *Queen) Ingest(t *wsapi.HiveTelemetry, now time.Time) error {
	if !q.IsQueen() || q.closed() {
		return ErrNotQueen
	}
	if err := wsapi.ValidName(t.HiveID); err != nil {
		return fmt.Errorf("hive_id: %w", err)
	}
	if err := t.Validate(t.HiveID); err != nil {
		return err
	}
	if q.isNode(t.HiveID) {
		return fmt.Errorf("%w: %s reports over its own session", ErrHiveIsNode, t.HiveID)
	}
	t.Type = wsapi.TypeHiveTelemetry
	t.Leases = nil
	setStates(t, nil)
	for i := range t.Workers {
		w := &t.Workers[i]
		if scheduler.Available(w.State) {
			w.State, w.StateReason = scheduler.StateSaturated, heartbeatOnly
		} else {
			w.StateReason = heartbeatOnly + "; " + w.StateReason
		}
	}
	q.registry.Update(t, now)
	q.publish(t)
	return nil
}

// isNode reports whether name is a live member of the cluster or has a
// session with this queen.
func (q *Queen) isNode(name string) bool {
	q.sessions.mu.Lock()
	_, ok := q.sessions.conns[name]
	q.sessions.mu.Unlock()
	if ok {
		return true
	}
	for _, m := range q.cfg.Members.LiveMembers() {
		if m.Name == name {
			return true
		}
	}
	return false
}
