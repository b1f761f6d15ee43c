package queen

import (
	"sync"

	"github.com/rbee/rbee/wsapi"
)

// migrationRing is the latest migrations the entry nodes reported, oldest
// first, at most wsapi.MaxMigrations: what the dashboard lists. Nothing else
// reads them, so a new queen starts with an empty ring rather than asking the
// nodes again. Its zero value is empty and ready; it is safe for concurrent
// use.
type migrationRing struct {
	mu   sync.Mutex
	list []wsapi.Migration
}

func (r *migrationRing) add(m wsapi.Migration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.list) == wsapi.MaxMigrations {
		// Shifting 20 entries is cheaper than the bookkeeping of a
		// circular buffer, and the event wants them in order anyway.
		copy(r.list, r.list[1:])
		r.list = r.list[:len(r.list)-1]
	}
	r.list = append(r.list, m)
}

// snapshot copies the list: the event is encoded after the lock is let go,
// while reports may come in.
func (r *migrationRing) snapshot() []wsapi.Migration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.list) == 0 {
		return nil
	}
	return append([]wsapi.Migration(nil), r.list...)
}

func (r *migrationRing) reset() {
	r.mu.Lock()
	r.list = nil
	r.mu.Unlock()
}

// AddMigration records a migration that this node, as the entry node, made;
// the other nodes report theirs over their sessions. It is dropped unless
// this node schedules (is queen) and it validates as a peer's would: the
// event must stay readable by every dashboard.
func (q *Queen) AddMigration(m wsapi.Migration) {
	if err := m.Validate(); err != nil {
		q.log.Debug("migration report not listed", "err", err)
		return
	}
	q.migrated(q.cfg.Name, &m)
}

// migrated lists migration m reported by peer, while this node schedules.
// The entry node logged it already; the queen only notes it.
func (q *Queen) migrated(peer string, m *wsapi.Migration) {
	// Under the scheduler's lock, so that a report that raced a change
	// of queen lands before startScheduling empties the ring, not after.
	q.schedMu.Lock()
	defer q.schedMu.Unlock()
	if q.sched == nil {
		return
	}
	q.log.Debug("stream migrated", "entry", peer, "model", m.Model, "from", m.From, "to", m.To,
		"tokens", m.Tokens, "result", m.Result, "reason", m.Reason)
	q.migrations.add(*m)
}
