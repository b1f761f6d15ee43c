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
		body, release, berr := p.readBody(w, r)
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
	p, err := New(Config{Name: "n", BodyTimeout: 200 * time.Millisecond})
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
