package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/wsapi"
)

func pendingCount(lc *LeaseClient) int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return len(lc.pending)
}

// A node that cannot reach the queen the others follow refuses lease
// requests at once, including those already waiting, instead of holding
// them for the whole queue timeout; a patient request still waits for the
// next session.
func TestLeaseClient_StrandedRefusesAtOnce(t *testing.T) {
	lc := NewLeaseClient("entry", time.Unix(0, 0))
	waiting := acquireAsync(context.Background(), lc, "m", time.Minute)
	testutil.Eventually(t, 5*time.Second, "request waiting for a session", func() error {
		if pendingCount(lc) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	patient := make(chan acquired, 1)
	go func() {
		g, lerr, err := lc.Ask(context.Background(), Ask{Model: "m", Wait: time.Minute, Patient: true})
		patient <- acquired{g, lerr, err}
	}()
	testutil.Eventually(t, 5*time.Second, "patient request waiting", func() error {
		if pendingCount(lc) != 2 {
			return errors.New("not yet")
		}
		return nil
	})

	lc.SetStranded("its session to queen q has failed for 2s")
	got := <-waiting
	if got.lerr == nil || got.lerr.Status != http.StatusServiceUnavailable || got.lerr.ErrorType != ErrTypeQueenUnreachable ||
		!strings.Contains(got.lerr.Message, "queen q") {
		t.Fatalf("waiting request got %+v, want 503 %s with the reason", got.lerr, ErrTypeQueenUnreachable)
	}
	start := time.Now()
	_, lerr, err := lc.Acquire(context.Background(), "m", time.Minute)
	if err != nil || lerr == nil || lerr.ErrorType != ErrTypeQueenUnreachable {
		t.Fatalf("new request got %+v, %v", lerr, err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Fatalf("refused after %s, not at once", waited) // a correctness bound, not a speed claim
	}

	// The patient one is still waiting, and is asked on the next session.
	u := &fakeUplink{}
	lc.Attach(u)
	r := waitRequests(t, u, 1)[0]
	lc.OnGrant(&wsapi.LeaseGrant{Type: wsapi.TypeLeaseGrant, RequestID: r.RequestID, LeaseID: "l1", Hive: "h", Worker: "g/1", Model: "m"})
	if p := <-patient; p.grant == nil {
		t.Fatalf("patient request got %+v", p)
	}
	lc.SetStranded("")
	lc.Detach(u)
	if pendingCount(lc) != 0 {
		t.Fatal("requests left pending")
	}
}

// peer is a node an entry node relays through, as seen from the test.
type peer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
	body []string
}

func newPeer(t *testing.T, h func(w http.ResponseWriter)) *peer {
	p := &peer{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.reqs = append(p.reqs, r)
		p.body = append(p.body, string(b))
		p.mu.Unlock()
		h(w)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *peer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.reqs)
}

// An entry node cut off from the queen serves its client through a peer: the
// request goes out as the client sent it (its key, its body, not the usage
// option the entry node adds), marked so that the peer does not pass it on,
// and a peer that is cut off too is skipped.
func TestRelay_StrandedEntryGoesThroughAPeer(t *testing.T) {
	stranded := newPeer(t, func(w http.ResponseWriter) {
		w.Header().Set(hdrRetry, "1")
		WriteError(w, http.StatusServiceUnavailable, ErrTypeQueenUnreachable, "cut off too")
	})
	good := newPeer(t, func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[]}\n\ndata: [DONE]\n\n")
	})
	p := testProxy(t, "entry", &fakeMembers{}, nil)
	p.cfg.Peers = func() []string {
		return []string{strings.TrimPrefix(stranded.URL, "http://"), strings.TrimPrefix(good.URL, "http://")}
	}
	p.leases.SetStranded("test")

	body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer client-key")
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	p.HandleInference(rec, req)

	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "[DONE]") {
		t.Fatalf("client got %d %q", rec.Code, rec.Body.String())
	}
	if stranded.count() != 1 || good.count() != 1 {
		t.Fatalf("peers asked: stranded %d, good %d; want 1 each", stranded.count(), good.count())
	}
	got := good.reqs[0]
	if got.Header.Get("Authorization") != "Bearer client-key" || got.Header.Get(hdrRelayedBy) != "entry" || got.URL.Path != "/v1/chat/completions" {
		t.Fatalf("relayed request: %s %v", got.URL, got.Header)
	}
	if good.body[0] != body {
		t.Fatalf("relayed body %q, want the client's %q", good.body[0], body)
	}
}

// A request relayed to a node that cannot reach the queen either is refused
// at once and marked so that its entry node tries another peer; it is never
// relayed a second time.
func TestRelay_RelayedRequestIsNotPassedOn(t *testing.T) {
	onward := newPeer(t, func(w http.ResponseWriter) {})
	p := testProxy(t, "peer", &fakeMembers{}, nil)
	p.cfg.Peers = func() []string { return []string{strings.TrimPrefix(onward.URL, "http://")} }
	p.leases.SetStranded("test")
	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
	req.Header.Set(hdrRelayedBy, "entry")
	rec := httptest.NewRecorder()
	p.HandleInference(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get(hdrRetry) == "" || onward.count() != 0 {
		t.Fatalf("got %d retry=%q, onward requests %d", rec.Code, rec.Header().Get(hdrRetry), onward.count())
	}
}
