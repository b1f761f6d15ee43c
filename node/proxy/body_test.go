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
)

// bodyServer answers with the status readBody gives and holds what it read
// until hold is closed, so a test can fill the budget.
func bodyServer(t *testing.T, p *Proxy, hold <-chan struct{}) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, release, berr := p.readBody(w, r, bodyHolder(r))
		if berr != nil {
			WriteError(w, berr.status, berr.typ, berr.msg)
			return
		}
		defer release()
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-hold
		fmt.Fprint(w, len(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestReadBody_NodeWideMemoryBound(t *testing.T) {
	p, err := New(Config{Name: "n", BodyMemory: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	srv := bodyServer(t, p, hold)
	big := strings.Repeat("x", 600<<10)
	// The first 600 KiB body is held; a second one would pass the 1 MiB
	// bound, with or without a Content-Length.
	first, err := http.Post(srv.URL, "application/json", strings.NewReader(big))
	if err != nil || first.StatusCode != 200 {
		t.Fatalf("first body: %v %v", first, err)
	}
	defer first.Body.Close()
	for _, chunked := range []bool{false, true} {
		var rd io.Reader = strings.NewReader(big)
		if chunked {
			rd = io.MultiReader(rd) // hides the length: sent chunked
		}
		resp, err := http.Post(srv.URL, "application/json", rd)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "server_overloaded") {
			t.Errorf("chunked=%v: %d %s, want 503 server_overloaded", chunked, resp.StatusCode, b)
		}
	}
	// A small body still fits beside the held one.
	small, err := http.Post(srv.URL, "application/json", io.MultiReader(strings.NewReader(`{"model":"m"}`)))
	if err != nil || small.StatusCode != 200 {
		t.Fatalf("small chunked body beside a held one: %v %v", small, err)
	}
	defer small.Body.Close()
	close(hold)
	n, _ := io.ReadAll(first.Body)
	if string(n) != fmt.Sprint(len(big)) {
		t.Fatalf("server read %s bytes, want %d", n, len(big))
	}
	io.Copy(io.Discard, small.Body)
	// Everything is given back once the requests end.
	testBudgetEmpty(t, p)
}

func testBudgetEmpty(t *testing.T, p *Proxy) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, "every body byte given back once the requests ended", func() error {
		p.bodies.mu.Lock()
		defer p.bodies.mu.Unlock()
		if p.bodies.used != 0 {
			return fmt.Errorf("%d bytes still counted", p.bodies.used)
		}
		return nil
	})
}

func TestReadBody_TooLargeAndTrickled(t *testing.T) {
	// A high minimum rate: the bytes sent at once still fall behind it.
	p, err := New(Config{Name: "n", BodyTimeout: 200 * time.Millisecond, BodyMinRate: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	close(hold)
	srv := bodyServer(t, p, hold)

	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("x"))
	req.ContentLength = maxInferenceBody + 1
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("declared oversize body: %d, want 413", resp.StatusCode)
		}
	}

	// A client that sends headers and a few bytes, then nothing.
	c, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\":")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a trickled body: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("trickled body: %d, want 408", resp.StatusCode)
	}
	testBudgetEmpty(t, p)
}

// TestReadBody_ReservedAsItArrives: a body is counted by what arrived, not by
// what its Content-Length declares; one that trickles is cut at the minimum
// rate, long before the body timeout, and says so.
func TestReadBody_ReservedAsItArrives(t *testing.T) {
	const timeout = 12 * time.Second // grace: 1 s
	p, err := New(Config{Name: "n", BodyMemory: 1 << 20, BodyTimeout: timeout, BodyMinRate: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	close(hold)
	srv := bodyServer(t, p, hold)
	// Eight clients each declare the largest body, 32 times the node's
	// whole budget, and send one byte.
	var conns []net.Conn
	for range 8 {
		c, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{", maxInferenceBody)
		conns = append(conns, c)
	}
	testutil.Eventually(t, 5*time.Second, "eight trickled bodies counted", func() error {
		p.bodies.mu.Lock()
		defer p.bodies.mu.Unlock()
		if p.bodies.used != 8*chunk {
			return fmt.Errorf("%d bytes counted, want one chunk each (%d)", p.bodies.used, 8*chunk)
		}
		return nil
	})
	// Others are served beside them.
	for i := range 3 {
		resp, err := http.Post(srv.URL, "application/json", strings.NewReader(`{"model":"m"}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d beside the trickles: %d", i, resp.StatusCode)
		}
	}
	start := time.Now()
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(timeout))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to a trickled body: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "arrived slower than 1024 KiB/s") {
			t.Fatalf("trickled body: %d %s, want 408 naming the minimum rate", resp.StatusCode, b)
		}
	}
	if waited := time.Since(start); waited > timeout/2 {
		t.Fatalf("trickles cut %v after they began, want the grace (%v), not the body timeout (%v)", waited, bodyGrace(timeout), timeout)
	}
	testBudgetEmpty(t, p)
}

func TestBudget_Shares(t *testing.T) {
	const mib = 1 << 20
	alice := holder{key: "alice", addr: "10.0.0.1"}
	type step struct {
		h    holder
		n    int64
		over string // "" taken
	}
	for _, tc := range []struct {
		name  string
		limit int64
		steps []step
	}{
		{"a key holds a quarter of a large budget", 256 * mib, []step{
			{alice, 64 * mib, ""},
			{holder{key: "alice", addr: "10.0.0.2"}, 1, overKey},
			{holder{key: "bob", addr: "10.0.0.2"}, 64 * mib, ""},
		}},
		{"an address holds a quarter, whatever key it uses", 256 * mib, []step{
			{holder{key: "a", addr: "10.0.0.9"}, 40 * mib, ""},
			{holder{key: "b", addr: "10.0.0.9"}, 40 * mib, overAddr},
			{holder{addr: "10.0.0.9"}, 24 * mib, ""},
			{holder{addr: "10.0.0.9"}, 1, overAddr},
		}},
		{"a small budget still takes one largest body", 48 * mib, []step{
			{alice, maxInferenceBody, ""},
			{holder{key: "bob"}, 16 * mib, ""},
			{holder{key: "carol"}, 1, overNode},
		}},
		{"unshared holders count against the node only", 64 * mib, []step{
			{holder{}, 64 * mib, ""},
			{holder{}, 1, overNode},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBudget(tc.limit)
			var taken []step
			for i, s := range tc.steps {
				if got := b.take(s.h, s.n); got != s.over {
					t.Fatalf("step %d: take(%+v, %d) = %q, want %q", i, s.h, s.n, got, s.over)
				}
				if s.over == "" {
					taken = append(taken, s)
				}
			}
			for _, s := range taken {
				b.give(s.h, s.n)
			}
			if b.used != 0 || len(b.byKey) != 0 || len(b.byAddr) != 0 {
				t.Fatalf("after giving everything back: used %d, keys %v, addrs %v", b.used, b.byKey, b.byAddr)
			}
		})
	}
}
