package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

// watchActive samples Active until stop is closed and returns the most it
// saw.
func watchActive(s *Simulator, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var most int64
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		for {
			most = max(most, s.Stats().Active)
			select {
			case <-stop:
				out <- most
				return
			case <-t.C:
			}
		}
	}()
	return out
}

func TestSlots_WaitingRequestsCountInPeakButNeverGenerate(t *testing.T) {
	// A TTFT far beyond the test keeps every request where it is: two
	// generating, eight waiting, until the clients give up.
	ts := startSim(t, Config{Slots: 2, TTFT: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var errs atomic.Int32
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.srv.URL+"/v1/chat/completions",
				strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`))
			resp, err := ts.hc.Do(req)
			if err == nil {
				resp.Body.Close()
				return
			}
			if errors.Is(err, context.Canceled) {
				errs.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	most := watchActive(ts.Simulator, stop)
	ts.statsAre(t, Stats{InFlight: 10, Peak: 10, Active: 2})
	cancel()
	wg.Wait()
	ts.statsAre(t, Stats{Peak: 10, Cancelled: 10})
	close(stop)
	if m := <-most; m > 2 {
		t.Errorf("%d requests generated at once on 2 slots", m)
	}
	if errs.Load() != 10 {
		t.Errorf("%d clients saw their own cancel, want 10", errs.Load())
	}
}

func TestSlots_QueuedRequestsAllServedTwoAtATime(t *testing.T) {
	ts := startSim(t, Config{Slots: 2, TokensPerSecond: 2000})
	stop := make(chan struct{})
	most := watchActive(ts.Simulator, stop)
	var wg sync.WaitGroup
	texts := make([]string, 10)
	for i := range texts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := ts.hc.Post(ts.srv.URL+"/v1/chat/completions", "application/json",
				strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":20,"stream":true}`))
			if err != nil {
				texts[i] = err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			texts[i] = string(b)
		}()
	}
	wg.Wait()
	close(stop)
	if m := <-most; m > 2 {
		t.Errorf("%d requests generated at once on 2 slots", m)
	}
	for i, s := range texts {
		if !strings.HasSuffix(strings.TrimSpace(s), "data: [DONE]") {
			t.Errorf("request %d: %q, want a stream ending in [DONE]", i, s)
		}
	}
	// A handler counts its request as it returns, just after the client
	// has read the last event.
	ts.statsAre(t, Stats{Served: 10})
	if p := ts.Stats().Peak; p < 2 || p > 10 {
		t.Errorf("peak %d, want 2 to 10", p)
	}
}

func TestCancel_FreesTheSlotAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		// while is when the client gives up: "generating" after its first
		// token, "waiting" for the slot another request holds.
		while string
	}{{"generating", "generating"}, {"waiting for a slot", "waiting"}} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startSim(t, Config{Slots: 1, TokensPerSecond: 1}) // a token a second: far slower than the test
			holdCtx, releaseHold := context.WithCancel(context.Background())
			defer releaseHold()
			hold := ts.post(holdCtx, t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":1000,"stream":true}`)
			defer hold.Body.Close()
			r := newSSEReader(hold.Body)
			for range 2 { // role, first token
				if _, err := r.next(); err != nil {
					t.Fatal(err)
				}
			}
			if tc.while == "waiting" {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() {
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.srv.URL+"/v1/chat/completions", strings.NewReader(`{"messages":[{"role":"user","content":"x"}]}`))
					resp, err := ts.hc.Do(req)
					if err == nil {
						resp.Body.Close()
					}
					done <- err
				}()
				ts.statsAre(t, Stats{InFlight: 2, Active: 1})
				cancel()
				if err := <-done; !errors.Is(err, context.Canceled) {
					t.Errorf("waiting request: %v, want cancelled", err)
				}
				ts.statsAre(t, Stats{InFlight: 1, Active: 1, Cancelled: 1})
			}
			releaseHold()
			want := Stats{Cancelled: 1}
			if tc.while == "waiting" {
				want.Cancelled = 2
			}
			ts.statsAre(t, want)
			// The slot is free: the next request's first token (due at
			// once) comes without waiting for the old stream's 1000.
			var c chunk
			ts.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"again"}],"max_tokens":1}`, &c)
			if len(c.Choices) != 1 || c.Choices[0].Message.Content != "The" {
				t.Errorf("after cancel: %+v", c)
			}
			want.Served = 1
			ts.statsAre(t, want)
		})
	}
}

func TestAbortAll_BreaksStreamsMidWay(t *testing.T) {
	ts := startSim(t, Config{Slots: 1, TokensPerSecond: 5})
	stream := ts.post(context.Background(), t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":1000,"stream":true}`)
	defer stream.Body.Close()
	r := newSSEReader(stream.Body)
	for range 2 { // role, first token
		if _, err := r.next(); err != nil {
			t.Fatal(err)
		}
	}
	// A second request waits for the slot; AbortAll breaks it too.
	waiting := make(chan error, 1)
	go func() {
		resp, err := ts.hc.Post(ts.srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"messages":[{"role":"user","content":"x"}]}`))
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		waiting <- err
	}()
	ts.statsAre(t, Stats{InFlight: 2, Active: 1})

	ts.AbortAll()
	var err error
	for err == nil {
		var data string
		data, err = r.next()
		if data == "[DONE]" {
			t.Fatal("stream finished cleanly after AbortAll")
		}
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("broken stream reads %v, want an unexpected EOF", err)
	}
	if err := <-waiting; err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("waiting request: %v, want a broken connection", err)
	}
	ts.statsAre(t, Stats{Aborted: 2})

	// Later requests are served.
	var c chunk
	ts.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"again"}],"max_tokens":1}`, &c)
	ts.statsAre(t, Stats{Aborted: 2, Served: 1})
}

func TestResetPeak_StartsFromWhatIsInFlight(t *testing.T) {
	ts := startSim(t, Config{Slots: 1, TTFT: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.srv.URL+"/v1/embeddings", strings.NewReader(`{"input":"x"}`))
		if resp, err := ts.hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	ts.statsAre(t, Stats{InFlight: 1, Peak: 1, Active: 1})
	ts.ResetPeak()
	if p := ts.Stats().Peak; p != 1 {
		t.Errorf("peak after reset with one in flight = %d, want 1", p)
	}
	cancel()
	<-done
	ts.statsAre(t, Stats{Cancelled: 1})
	ts.ResetPeak()
	if p := ts.Stats().Peak; p != 0 {
		t.Errorf("peak after reset when idle = %d, want 0", p)
	}
}

func TestAbortAll_BreaksAResponseBlockedOnAClientThatDoesNotRead(t *testing.T) {
	s, err := New(Config{Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(s.Handler())
	// Small socket buffers on both ends: an unpaced 4096-token stream
	// (about 1 MB) fills them at once, and the handler blocks writing.
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			_ = c.(*net.TCPConn).SetWriteBuffer(4096)
		}
	}
	srv.Start()
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	body := `{"stream":true,"max_tokens":4096,"messages":[{"role":"user","content":"x"}]}`
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		t.Fatalf("no response: %v", err)
	}
	// Give the handler time to fill the buffers and block. Nothing is
	// asserted on this delay: were the handler not blocked yet, it would
	// still have to stop, only by another path.
	<-time.After(100 * time.Millisecond)
	s.AbortAll()
	testutil.Eventually(t, 5*time.Second, "blocked stream aborted", func() error {
		if st := s.Stats(); st.Aborted != 1 || st.InFlight != 0 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
}
