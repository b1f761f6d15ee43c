package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/tenants"
)

func TestKeyGate(t *testing.T) {
	capped := &tenants.Tenant{Name: "batch", MaxConcurrent: 2}
	free := &tenants.Tenant{Name: "free"}
	type step struct {
		t     *tenants.Tenant
		leave bool
		ok    bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"no tenant always passes", []step{{nil, false, true}, {nil, false, true}, {nil, false, true}}},
		{"a key without a cap always passes", []step{{free, false, true}, {free, false, true}, {free, false, true}}},
		{"a capped key passes up to its cap", []step{{capped, false, true}, {capped, false, true}, {capped, false, false}}},
		{"a request that ends makes room", []step{{capped, false, true}, {capped, false, true}, {capped, true, true}, {capped, false, true}, {capped, false, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &keyGate{n: map[string]int{}}
			for i, s := range tc.steps {
				if s.leave {
					g.leave(s.t)
					continue
				}
				if _, ok := g.enter(s.t); ok != s.ok {
					t.Fatalf("step %d: enter = %v, want %v", i, ok, s.ok)
				}
			}
		})
	}
}

// TestHandleInference_CapBeforeBody: a key at its max_concurrent at this node
// is refused before its body is read, so a capped key cannot hold body
// memory (or connections waiting on bodies) beyond its cap.
func TestHandleInference_CapBeforeBody(t *testing.T) {
	p, err := New(Config{Name: "n", BodyTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ten := &tenants.Tenant{Name: "batch", Class: tenants.Batch, MaxConcurrent: 1}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.HandleInference(w, r.WithContext(WithTenant(r.Context(), ten)))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	send := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		// A body declared and not sent: only a request that never
		// reads it is answered before the body timeout.
		fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", maxInferenceBody)
		return c, bufio.NewReader(c)
	}
	first, _ := send()
	defer first.Close()
	testBodiesHeld(t, p, chunk) // the first is reading its body
	second, br := send()
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("second request of a key at its cap: no answer before its body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "max_concurrent") {
		t.Fatalf("second request: %d %q Retry-After %q, want 429 naming max_concurrent", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	first.Close()
	testBudgetEmpty(t, p)
	// The first request's end frees the key's place.
	third, br := send()
	defer third.Close()
	testBodiesHeld(t, p, chunk)
	third.Close()
	_, _ = http.ReadResponse(br, nil)
	testBudgetEmpty(t, p)
}

// testBodiesHeld waits until the node counts n body bytes.
func testBodiesHeld(t *testing.T, p *Proxy, n int64) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%d body bytes counted", n), func() error {
		p.bodies.mu.Lock()
		defer p.bodies.mu.Unlock()
		if p.bodies.used != n {
			return fmt.Errorf("%d counted", p.bodies.used)
		}
		return nil
	})
}
