package node

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// leaseClient is the entry node's side of leasing: it asks the queen over the
// node's session and waits for the answer. Requests still waiting when the
// session breaks (the queen died) are asked again, with the same ids, on the
// next session, so a failover costs a client added latency, not an error.
type leaseClient struct {
	prefix string
	seq    atomic.Uint64
	// graceAfterDeadline: the queen answers 503 at the deadline; this
	// fallback fires when no queen could be asked at all.
	grace time.Duration

	mu      sync.Mutex
	sess    *wsapi.Session
	out     *wsapi.Outbox // sess's outbox
	pending map[string]*pendingLease
}

type pendingLease struct {
	msg      wsapi.LeaseRequest
	deadline time.Time
	ch       chan leaseAnswer // buffered 1
}

type leaseAnswer struct {
	grant *wsapi.LeaseGrant
	err   *wsapi.LeaseError
}

func newLeaseClient(name string, start time.Time) *leaseClient {
	// The start time keeps ids unique across restarts of the same node.
	return &leaseClient{
		prefix:  name + "." + strconv.FormatInt(start.UnixNano(), 36) + ".",
		grace:   2 * time.Second,
		pending: make(map[string]*pendingLease),
	}
}

// attach makes s (writing through out) the session to ask on and asks again
// everything waiting.
func (lc *leaseClient) attach(s *wsapi.Session, out *wsapi.Outbox) {
	lc.mu.Lock()
	lc.sess, lc.out = s, out
	now := time.Now()
	msgs := make([]wsapi.LeaseRequest, 0, len(lc.pending))
	for _, p := range lc.pending {
		m := p.msg
		m.WaitMS = max(p.deadline.Sub(now).Milliseconds(), 0)
		msgs = append(msgs, m)
	}
	lc.mu.Unlock()
	for i := range msgs {
		lc.put(s, out, &msgs[i])
	}
}

// detach forgets s if it is the current session.
func (lc *leaseClient) detach(s *wsapi.Session) {
	lc.mu.Lock()
	if lc.sess == s {
		lc.sess, lc.out = nil, nil
	}
	lc.mu.Unlock()
}

func (lc *leaseClient) send(msg any) {
	lc.mu.Lock()
	s, out := lc.sess, lc.out
	lc.mu.Unlock()
	if s != nil {
		lc.put(s, out, msg)
	}
}

// put queues msg on the session's outbox. A queen that lets thousands of
// messages pile up is not reading: the session is dropped, and what was
// waiting is asked again on the next one.
func (lc *leaseClient) put(s *wsapi.Session, out *wsapi.Outbox, msg any) {
	b, err := wsapi.Encode(msg)
	if err != nil {
		return
	}
	// Written in this goroutine when the session is idle (the lowest
	// latency), else batched by the writer at work.
	if out.Send(context.Background(), b) != nil {
		s.CloseNow()
	}
}

// acquire asks for a lease on a worker serving model and waits up to wait.
// It returns the grant, or an error the client should see (status 404, 429,
// 503), or ctx's error when the client went away.
func (lc *leaseClient) acquire(ctx context.Context, model string, wait time.Duration) (*wsapi.LeaseGrant, *wsapi.LeaseError, error) {
	id := lc.prefix + strconv.FormatUint(lc.seq.Add(1), 36)
	p := &pendingLease{
		msg:      wsapi.LeaseRequest{Type: wsapi.TypeLeaseRequest, RequestID: id, Model: model, WaitMS: wait.Milliseconds()},
		deadline: time.Now().Add(wait),
		ch:       make(chan leaseAnswer, 1),
	}
	lc.mu.Lock()
	lc.pending[id] = p
	s, out := lc.sess, lc.out
	lc.mu.Unlock()
	if s != nil {
		lc.put(s, out, &p.msg)
	}
	t := time.NewTimer(wait + lc.grace)
	defer t.Stop()
	select {
	case a := <-p.ch:
		return a.grant, a.err, nil
	case <-ctx.Done():
		lc.abandon(p)
		return nil, nil, ctx.Err()
	case <-t.C:
		lc.abandon(p)
		return nil, &wsapi.LeaseError{Status: http.StatusServiceUnavailable, ErrorType: "no_queen",
			Message: "no queen answered within the wait limit (the cluster is electing one, or this node cannot reach it)"}, nil
	}
}

// abandon withdraws p; a grant that arrived as the caller gave up is
// returned at once rather than left for the queen to reclaim.
func (lc *leaseClient) abandon(p *pendingLease) {
	lc.forget(p.msg.RequestID)
	select {
	case a := <-p.ch:
		if a.grant != nil {
			lc.release(a.grant.LeaseID)
		}
	default:
	}
}

// forget drops a waiting request and withdraws it from the queen; a grant
// that crosses the cancel on the wire is released in onGrant.
func (lc *leaseClient) forget(id string) {
	lc.mu.Lock()
	_, ok := lc.pending[id]
	delete(lc.pending, id)
	lc.mu.Unlock()
	if ok {
		lc.send(&wsapi.LeaseCancel{Type: wsapi.TypeLeaseCancel, RequestID: id})
	}
}

func (lc *leaseClient) onGrant(g *wsapi.LeaseGrant) {
	lc.mu.Lock()
	p := lc.pending[g.RequestID]
	delete(lc.pending, g.RequestID)
	lc.mu.Unlock()
	if p == nil {
		lc.release(g.LeaseID)
		return
	}
	p.ch <- leaseAnswer{grant: g}
}

func (lc *leaseClient) onError(e *wsapi.LeaseError) {
	lc.mu.Lock()
	p := lc.pending[e.RequestID]
	delete(lc.pending, e.RequestID)
	lc.mu.Unlock()
	if p != nil {
		p.ch <- leaseAnswer{err: e}
	}
}

// release returns a lease's slot to the queen. Without a session it is
// dropped: the new queen learns from the hives which leases still run.
func (lc *leaseClient) release(leaseID string) {
	lc.send(&wsapi.LeaseRelease{Type: wsapi.TypeLeaseRelease, LeaseID: leaseID})
}
