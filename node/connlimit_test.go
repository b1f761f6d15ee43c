package node

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestDefaultMaxConns(t *testing.T) {
	for _, tc := range []struct {
		nofile uint64
		want   int
	}{
		{0, minMaxConns},
		{100, minMaxConns},
		{1024, 256},
		{20000, 5000},
		{1 << 20, maxConnsCeiling},
	} {
		if got := DefaultMaxConns(tc.nofile); got != tc.want {
			t.Errorf("DefaultMaxConns(%d) = %d, want %d", tc.nofile, got, tc.want)
		}
	}
}

// TestConnTable: who is let in, who is refused, and whom the cap closes.
func TestConnTable(t *testing.T) {
	// An op acts on conns[i]; add makes conns[i] from addr.
	type op struct {
		do      string // add, active, idle, hijack, auth, close
		i       int
		addr    string
		victim  int    // for add: the index of the connection to close, -1 none
		refused string // for add
	}
	add := func(i int, addr string, victim int, refused string) op {
		return op{do: "add", i: i, addr: addr, victim: victim, refused: refused}
	}
	on := func(do string, i int) op { return op{do: do, i: i} }
	const a, b, lo = "10.0.0.1", "10.0.0.2", "127.0.0.1"
	for _, tc := range []struct {
		name     string
		maxConns int
		ops      []op
	}{
		{"under the cap everyone is let in", 64, []op{
			add(0, a, -1, ""), add(1, b, -1, ""), add(2, a, -1, ""),
		}},
		{"an address holds an eighth of the cap", 128, []op{
			// perAddr = 16
			add(0, a, -1, ""), add(1, a, -1, ""), add(2, a, -1, ""), add(3, a, -1, ""),
			add(4, a, -1, ""), add(5, a, -1, ""), add(6, a, -1, ""), add(7, a, -1, ""),
			add(8, a, -1, ""), add(9, a, -1, ""), add(10, a, -1, ""), add(11, a, -1, ""),
			add(12, a, -1, ""), add(13, a, -1, ""), add(14, a, -1, ""), add(15, a, -1, ""),
			add(16, a, -1, refusedPerAddr),
			add(17, b, -1, ""),
			on("close", 0), add(18, a, -1, ""),
		}},
		{"loopback has no address share", 128, func() []op {
			var ops []op
			for i := range 40 {
				ops = append(ops, add(i, lo, -1, ""))
			}
			return ops
		}()},
		{"at the cap those without a key go first, least recently used first", 4, []op{
			add(0, a, -1, ""), add(1, a, -1, ""), add(2, a, -1, ""), add(3, a, -1, ""),
			on("active", 0), on("auth", 0), on("idle", 0), // showed a key, now idle
			on("active", 1),                // serving a request
			on("active", 2), on("idle", 2), // idle keep-alive, no key, just used
			add(4, b, 3, ""), // 3 has done nothing since it was accepted
			add(5, b, 2, ""),
			add(6, b, 4, ""),
			add(7, b, 5, ""),
			on("active", 6), on("active", 7),
			add(8, b, 0, ""), // none without a key is left idle
			on("active", 8),
			add(9, b, -1, refusedFull),
		}},
		{"running requests and WebSockets are never cut", 8, func() []op {
			var ops []op
			for i := range 8 {
				ops = append(ops, add(i, fmt.Sprintf("10.0.1.%d", i), -1, ""), on("active", i), on("auth", i))
			}
			return append(ops,
				add(8, b, -1, refusedFull),
				on("idle", 5), on("hijack", 6), on("idle", 7),
				add(9, b, 5, ""),
				on("active", 9), on("auth", 9),
				add(10, b, 7, ""),
				add(11, b, 10, ""), // 10 has no key yet: it goes before anyone keyed
				on("active", 11),
				add(12, b, -1, refusedFull),
			)
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := newConnTable(tc.maxConns)
			conns := map[int]*connEntry{}
			for k, o := range tc.ops {
				e := conns[o.i]
				switch o.do {
				case "add":
					e = &connEntry{addr: o.addr, exempt: net.ParseIP(o.addr).IsLoopback()}
					victim, refused := tab.admit(e)
					if refused != o.refused {
						t.Fatalf("op %d: conn %d refused %q, want %q", k, o.i, refused, o.refused)
					}
					var want *connEntry
					if o.victim >= 0 {
						want = conns[o.victim]
					}
					if victim != want {
						t.Fatalf("op %d: conn %d closed %+v, want conn %d", k, o.i, victim, o.victim)
					}
					if refused == "" {
						conns[o.i] = e
					}
				case "active":
					tab.setPhase(e, phaseActive)
				case "idle":
					tab.setPhase(e, phaseIdle)
				case "hijack":
					tab.setPhase(e, phaseHijacked)
				case "auth":
					tab.authenticate(e)
				case "close":
					tab.remove(e)
				}
			}
			n := 0
			for _, e := range conns {
				if !e.gone {
					n++
				}
			}
			if tab.total != n {
				t.Fatalf("table counts %d, %d open", tab.total, n)
			}
		})
	}
}

// A keep-alive connection that never showed a key is closed after
// unauthIdle, one that did keeps the server's idle timeout.
func TestLimitListener_ShortIdleWithoutKey(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim, err := newLimitListener(ln, 64, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	lim.unauthIdle = 200 * time.Millisecond
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/auth" {
				markAuthenticated(r)
			}
		}),
		IdleTimeout: time.Minute,
		ConnState:   lim.connState,
		ConnContext: withTrackedConn,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(newMuxListener(lim, nil)) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Error(err)
		}
	}()
	get := func(path string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return c, br
	}
	anon, anonR := get("/")
	defer anon.Close()
	keyed, keyedR := get("/auth")
	defer keyed.Close()
	// The anonymous connection is closed by the node; the keyed one is
	// still open well after.
	anon.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := anonR.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection without a key: read %v, want EOF (closed by the node)", err)
	}
	keyed.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := keyedR.ReadByte(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle connection with a key: read %v, want it still open", err)
	}
}
