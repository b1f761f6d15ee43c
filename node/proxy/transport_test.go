package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// countingServer is a test server that counts the connections it accepted.
func countingServer(t *testing.T, tls bool, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv, &conns
}

func post(t *testing.T, c *http.Client, ctx context.Context, url, body string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	return c.Do(req)
}

func echo(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "%s %s", r.Method, b)
}

func TestSyncTransport_KeepsConnectionsAlive(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", tls), func(t *testing.T) {
			srv, conns := countingServer(t, tls, echo)
			var cfg = srv.Client().Transport.(*http.Transport).TLSClientConfig
			tr := newSyncTransport(cfg, http.DefaultTransport)
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			for i := range 5 {
				resp, err := post(t, c, context.Background(), srv.URL+"/x", fmt.Sprint("hi", i))
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != fmt.Sprint("POST hi", i) {
					t.Fatalf("answer %q", b)
				}
			}
			if n := conns.Load(); n != 1 {
				t.Fatalf("%d connections for 5 requests in a row, want 1", n)
			}
		})
	}
}

func TestSyncTransport_ServerClosedIdleConnection(t *testing.T) {
	srv, conns := countingServer(t, false, echo)
	tr := newSyncTransport(nil, http.DefaultTransport)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for i := range 3 {
		resp, err := post(t, c, context.Background(), srv.URL, "again")
		if err != nil {
			t.Fatalf("request %d after the server closed the idle connection: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "POST again" {
			t.Fatalf("answer %q: the body was not sent again whole", b)
		}
		srv.CloseClientConnections()
	}
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
}

func TestSyncTransport_StreamsAndStopsWhenCancelled(t *testing.T) {
	release := make(chan struct{})
	srv, conns := countingServer(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
		}
		if r.URL.Path == "/hang" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	})
	defer close(release)
	tr := newSyncTransport(nil, http.DefaultTransport)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	resp, err := post(t, c, context.Background(), srv.URL+"/done", "")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" || resp.TransferEncoding == nil {
		t.Fatalf("chunked stream read as %q (%v)", b, resp.TransferEncoding)
	}
	// A stream whose client goes away: the read in progress ends.
	ctx, cancel := context.WithCancel(context.Background())
	resp, err = post(t, c, ctx, srv.URL+"/hang", "")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := io.ReadAtLeast(resp.Body, buf, len("data: 0\n\ndata: 1\n\ndata: 2\n\n")); err != nil {
		t.Fatalf("read %q: %v", buf[:n], err)
	}
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err = resp.Body.Read(buf)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: %v, want context.Canceled", err)
	}
	resp.Body.Close()
	// That connection is not used again; an early Close closes one too.
	resp, err = post(t, c, context.Background(), srv.URL+"/done", "")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = post(t, c, context.Background(), srv.URL+"/done", "")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections, want 3 (a new one after a cancel and after an early close)", n)
	}
}

func TestSyncTransport_ConnectionCloseIsNotKept(t *testing.T) {
	srv, conns := countingServer(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	tr := newSyncTransport(nil, http.DefaultTransport)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for range 2 {
		resp, err := post(t, c, context.Background(), srv.URL, "")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "bye" {
			t.Fatalf("answer %q", b)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
	// Nothing listening: the error says so, at once.
	if _, err := post(t, c, context.Background(), "http://127.0.0.1:1/", ""); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("error %v, want connection refused", err)
	}
}

// TestSyncTransport_EarlyAnswerToALargeBody: a server that answers before it
// reads a body too large to skip (the hive's refusals do) and closes the
// connection: the answer is what the caller gets, as with net/http, not a
// failed write.
func TestSyncTransport_EarlyAnswerToALargeBody(t *testing.T) {
	srv, _ := countingServer(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/warm" {
			io.Copy(io.Discard, r.Body)
			return
		}
		w.Header().Set("X-Rbee-Retry", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	tr := newSyncTransport(nil, http.DefaultTransport)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for _, path := range []string{"/warm", "/refuse"} {
		resp, err := post(t, c, context.Background(), srv.URL+path, strings.Repeat("x", 32<<20))
		if err != nil {
			t.Fatalf("%s: %v, want the server's answer", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if path == "/refuse" && (resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Rbee-Retry") != "1") {
			t.Fatalf("answer %d %v, want the 503 with its header", resp.StatusCode, resp.Header)
		}
	}
}

// TestSyncTransport_NeverSendsAPostTwice: a server that reads a request
// whole and drops the connection without an answer may have acted on it: the
// error goes to the caller, and the request is not sent again.
func TestSyncTransport_NeverSendsAPostTwice(t *testing.T) {
	var hits atomic.Int32
	srv, _ := countingServer(t, false, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path != "/warm" && hits.Add(1) == 1 {
			panic(http.ErrAbortHandler) // the connection closes, no answer
		}
	})
	tr := newSyncTransport(nil, http.DefaultTransport)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	resp, err := post(t, c, context.Background(), srv.URL+"/warm", "{}")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if _, err := post(t, c, context.Background(), srv.URL+"/gen", `{"prompt":"x"}`); err == nil {
		t.Fatal("no error for a request the server dropped")
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("the server got the request %d times, want 1", n)
	}
}

// Idle connections to a host that is not asked again (a worker gone, a hive
// that left) are closed once they have been idle past the timeout, by the
// next connection put back to any host; none stayed open for good.
func TestSyncTransport_ClosesConnectionsIdleTooLong(t *testing.T) {
	var closed atomic.Int64
	gone := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	gone.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed.Add(1)
		}
	}
	gone.Start()
	t.Cleanup(gone.Close)
	other, _ := countingServer(t, false, echo)
	tr := newSyncTransport(nil, http.DefaultTransport)
	defer tr.Close()
	c := &http.Client{Transport: tr}
	get := func(url string) {
		t.Helper()
		resp, err := post(t, c, context.Background(), url, "hi")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	get(gone.URL)
	// As if it and the last pruning were long ago.
	tr.mu.Lock()
	for _, pc := range tr.idle["http://"+gone.Listener.Addr().String()] {
		pc.idleAt = pc.idleAt.Add(-2 * syncIdleTimeout)
	}
	tr.pruned = tr.pruned.Add(-2 * syncIdleTimeout)
	tr.mu.Unlock()
	get(other.URL)
	tr.mu.Lock()
	_, kept := tr.idle["http://"+gone.Listener.Addr().String()]
	tr.mu.Unlock()
	if kept {
		t.Fatal("the idle list of a host not asked again is still there")
	}
	testutil.Eventually(t, 5*time.Second, "the server sees its idle connection closed", func() error {
		if closed.Load() == 0 {
			return errors.New("still open")
		}
		return nil
	})
}
