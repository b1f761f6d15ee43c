package proxy

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/wsapi"
)

// fakeUplink records what the lease client sends, decoded, and can refuse.
type fakeUplink struct {
	mu     sync.Mutex
	sent   []any
	fail   error
	broken bool
}

func (u *fakeUplink) Send(b []byte) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.fail != nil {
		return u.fail
	}
	msg, err := wsapi.Decode(b)
	if err != nil {
		return err
	}
	u.sent = append(u.sent, msg)
	return nil
}

func (u *fakeUplink) Queue(b []byte) error { return u.Send(b) }

func (u *fakeUplink) Knows(string) bool { return true }

func (u *fakeUplink) Break() {
	u.mu.Lock()
	u.broken = true
	u.mu.Unlock()
}

func (u *fakeUplink) messages() []any {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]any(nil), u.sent...)
}

// requests returns the lease requests sent so far.
func (u *fakeUplink) requests() []*wsapi.LeaseRequest {
	var out []*wsapi.LeaseRequest
	for _, m := range u.messages() {
		if r, ok := m.(*wsapi.LeaseRequest); ok {
			out = append(out, r)
		}
	}
	return out
}

type acquired struct {
	grant *wsapi.LeaseGrant
	lerr  *wsapi.LeaseError
	err   error
}

func acquireAsync(ctx context.Context, lc *LeaseClient, model string, wait time.Duration) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		g, lerr, err := lc.Acquire(ctx, model, wait)
		ch <- acquired{g, lerr, err}
	}()
	return ch
}

func waitRequests(t *testing.T, u *fakeUplink, n int) []*wsapi.LeaseRequest {
	t.Helper()
	var rs []*wsapi.LeaseRequest
	testutil.Eventually(t, 5*time.Second, "lease requests sent", func() error {
		if rs = u.requests(); len(rs) < n {
			return errors.New("not yet")
		}
		return nil
	})
	return rs
}

func TestLeaseClient_GrantReachesTheWaitingRequest(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	u := &fakeUplink{}
	lc.Attach(u)
	res := acquireAsync(context.Background(), lc, "m", time.Minute)
	r := waitRequests(t, u, 1)[0]
	if r.Model != "m" || r.WaitMS != time.Minute.Milliseconds() || r.RequestID == "" {
		t.Fatalf("request = %+v", r)
	}
	lc.OnGrant(&wsapi.LeaseGrant{Type: wsapi.TypeLeaseGrant, RequestID: r.RequestID, LeaseID: "l1", Hive: "h", Worker: "g/1", Model: "m"})
	got := <-res
	if got.err != nil || got.lerr != nil || got.grant == nil || got.grant.LeaseID != "l1" {
		t.Fatalf("acquire = %+v", got)
	}
}

func TestLeaseClient_RefusalReachesTheWaitingRequest(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	u := &fakeUplink{}
	lc.Attach(u)
	res := acquireAsync(context.Background(), lc, "nope", time.Minute)
	r := waitRequests(t, u, 1)[0]
	lc.OnError(&wsapi.LeaseError{Type: wsapi.TypeLeaseError, RequestID: r.RequestID, Status: 404, ErrorType: "model_not_found", Message: "no"})
	if got := <-res; got.lerr == nil || got.lerr.Status != 404 || got.grant != nil {
		t.Fatalf("acquire = %+v, want the 404", got)
	}
}

// A request made while no session is up is asked on the next one; one
// waiting when the session breaks is asked again, with the same id and the
// wait it has left, on the next.
func TestLeaseClient_AsksAgainOnTheNextSession(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	res := acquireAsync(context.Background(), lc, "m", time.Minute)
	first := &fakeUplink{}
	// Attach may come before Acquire registered: keep attaching until
	// the request shows up, as a node's redials would.
	testutil.Eventually(t, 5*time.Second, "request asked on the first session", func() error {
		lc.Attach(first)
		if len(first.requests()) == 0 {
			return errors.New("not asked")
		}
		return nil
	})
	r1 := first.requests()[0]
	lc.Detach(first)
	second := &fakeUplink{}
	lc.Attach(second)
	r2 := waitRequests(t, second, 1)[0]
	if r2.RequestID != r1.RequestID || r2.WaitMS > r1.WaitMS || r2.WaitMS <= 0 {
		t.Fatalf("asked again as %+v, first as %+v: want the same id and no more wait", r2, r1)
	}
	lc.OnGrant(&wsapi.LeaseGrant{RequestID: r2.RequestID, LeaseID: "l", Hive: "h", Worker: "g/1"})
	if got := <-res; got.grant == nil {
		t.Fatalf("acquire = %+v", got)
	}
	lc.Detach(first) // not the current session: changes nothing
	lc.Release("l")
	if ms := second.messages(); len(ms) != 2 {
		t.Fatalf("second session got %v, want the request and the release", ms)
	}
}

// A client that goes away withdraws its request; a grant that crosses the
// withdrawal on the wire is released at once, not left for the queen to
// reclaim.
func TestLeaseClient_ClientGoneCancelsAndReleasesALateGrant(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	u := &fakeUplink{}
	lc.Attach(u)
	ctx, cancel := context.WithCancel(context.Background())
	res := acquireAsync(ctx, lc, "m", time.Minute)
	r := waitRequests(t, u, 1)[0]
	cancel()
	if got := <-res; !errors.Is(got.err, context.Canceled) {
		t.Fatalf("acquire = %+v, want the context's error", got)
	}
	lc.OnGrant(&wsapi.LeaseGrant{RequestID: r.RequestID, LeaseID: "late", Hive: "h", Worker: "g/1"})
	ms := u.messages()
	if len(ms) != 3 {
		t.Fatalf("sent %d messages, want request, cancel, release: %v", len(ms), ms)
	}
	if c, ok := ms[1].(*wsapi.LeaseCancel); !ok || c.RequestID != r.RequestID {
		t.Errorf("second message %+v, want the cancel", ms[1])
	}
	if rel, ok := ms[2].(*wsapi.LeaseRelease); !ok || rel.LeaseID != "late" {
		t.Errorf("third message %+v, want the late grant released", ms[2])
	}
}

func TestLeaseClient_NoQueenAnswersServiceUnavailable(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	lc.grace = 10 * time.Millisecond
	_, lerr, err := lc.Acquire(context.Background(), "m", 20*time.Millisecond)
	if err != nil || lerr == nil || lerr.Status != http.StatusServiceUnavailable || lerr.ErrorType != "no_queen" {
		t.Fatalf("acquire = %+v, %v; want 503 no_queen", lerr, err)
	}
}

func TestLeaseClient_SessionThatCannotTakeMoreIsDropped(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	u := &fakeUplink{fail: wsapi.ErrOutboxFull}
	lc.Attach(u)
	lc.Release("l")
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.broken {
		t.Fatal("a session whose outbox is full was not broken")
	}
}

func TestLeaseClient_CloseFailsWaitingAndLaterRequests(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	u := &fakeUplink{}
	lc.Attach(u)
	res := acquireAsync(context.Background(), lc, "m", time.Minute)
	waitRequests(t, u, 1)
	lc.Close()
	if got := <-res; got.lerr == nil || got.lerr.Status != http.StatusServiceUnavailable {
		t.Fatalf("waiting acquire = %+v, want 503", got)
	}
	_, lerr, err := lc.Acquire(context.Background(), "m", time.Minute)
	if err != nil || lerr == nil || lerr.ErrorType != "shutting_down" {
		t.Fatalf("later acquire = %+v, %v; want 503 shutting_down", lerr, err)
	}
}

// The entry node releases a lease when the answer has reached the client and
// again when the request ends: the queen hears of it once per session; a
// release the node could not send (no session) is sent when asked again on
// a new one.
func TestLeaseClient_ReleaseIsSentOncePerSession(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	lc.Release("early") // no session: dropped, not remembered
	u := &fakeUplink{}
	lc.Attach(u)
	for range 3 {
		lc.Release("l1")
	}
	lc.Release("l2")
	lc.Release("early")
	var got []string
	for _, m := range u.messages() {
		if r, ok := m.(*wsapi.LeaseRelease); ok {
			got = append(got, r.LeaseID)
		}
	}
	if want := []string{"l1", "l2", "early"}; !slices.Equal(got, want) {
		t.Fatalf("released %v, want %v", got, want)
	}
	second := &fakeUplink{}
	lc.Attach(second)
	lc.Release("l1")
	if ms := second.messages(); len(ms) != 1 {
		t.Fatalf("the new session got %v, want the release", ms)
	}
	// The set forgets the oldest ids, not the recent ones.
	var r recentSet
	for i := range recentReleases + 1 {
		if r.seen(strconv.Itoa(i)) {
			t.Fatalf("id %d seen before it was added", i)
		}
	}
	if r.seen("0") || !r.seen(strconv.Itoa(recentReleases)) {
		t.Error("the oldest id was kept or the newest forgotten")
	}
}
