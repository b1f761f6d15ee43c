package wsapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func TestSplitBatch(t *testing.T) {
	cases := []struct {
		name  string
		frame string
		parts []string
		err   bool
	}{
		{"single message", `{"type":"lease_cancel","request_id":"a"}`, []string{`{"type":"lease_cancel","request_id":"a"}`}, false},
		{"batch", `[{"type":"lease_cancel","request_id":"a"},{"type":"lease_release","lease_id":"b"}]`,
			[]string{`{"type":"lease_cancel","request_id":"a"}`, `{"type":"lease_release","lease_id":"b"}`}, false},
		{"empty batch", `[]`, nil, true},
		{"broken batch", `[{"type":"lease_cancel"`, nil, true},
		{"too many", "[" + strings.Repeat(`{},`, MaxBatch) + "{}]", nil, true},
	}
	for _, c := range cases {
		got, err := splitBatch([]byte(c.frame))
		if (err != nil) != c.err {
			t.Fatalf("%s: err %v, want error %v", c.name, err, c.err)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s: %v is not ErrMalformed", c.name, err)
			}
			continue
		}
		if len(got) != len(c.parts) {
			t.Fatalf("%s: %d parts, want %d", c.name, len(got), len(c.parts))
		}
		for i := range got {
			if string(got[i]) != c.parts[i] {
				t.Fatalf("%s: part %d = %s, want %s", c.name, i, got[i], c.parts[i])
			}
		}
	}
}

// TestOutbox_BatchesReachTheQueenInOrder: messages queued faster than they
// are written arrive as batches, every one, in order, each validated.
func TestOutbox_BatchesReachTheQueenInOrder(t *testing.T) {
	const total = 2000
	got := make(chan string, total)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		qs, err := AcceptHive(w, r, &SessionOptions{Name: "queen"})
		if err != nil {
			served <- err
			return
		}
		served <- qs.Serve(ctx, func(msg any, raw []byte) error {
			if m, ok := msg.(*LeaseCancel); ok {
				got <- m.RequestID
			}
			return nil
		})
	}))
	defer srv.Close()
	dctx, dcancel := context.WithTimeout(ctx, testWait)
	defer dcancel()
	s, err := DialHive(dctx, "ws"+strings.TrimPrefix(srv.URL, "http"), &SessionOptions{Name: "hive-1", HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.CloseNow()
	out := NewOutbox(s, total)
	done := make(chan error, 1)
	for i := range total {
		b, _ := Encode(&LeaseCancel{Type: TypeLeaseCancel, RequestID: fmt.Sprint(i)})
		if err := out.Put(b); err != nil {
			t.Fatal(err)
		}
	}
	go func() { done <- out.Run(ctx) }()
	for i := range total {
		if id := <-got; id != fmt.Sprint(i) {
			t.Fatalf("message %d arrived as %s", i, id)
		}
	}
	// Send from many goroutines at once: each message is written once,
	// by its sender or by the writer at work, and each sender's messages
	// keep their order.
	const senders, each = 8, 250
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				b, _ := Encode(&LeaseCancel{Type: TypeLeaseCancel, RequestID: fmt.Sprintf("%d.%d", g, i)})
				if err := out.Send(ctx, b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	last := make(map[string]int)
	for range senders * each {
		var g string
		var i int
		fmt.Sscanf(strings.Replace(<-got, ".", " ", 1), "%s %d", &g, &i)
		if prev, ok := last[g]; ok && i != prev+1 {
			t.Fatalf("sender %s: message %d after %d", g, i, prev)
		}
		last[g] = i
	}
	wg.Wait()
	cancel()
	<-done
	<-served
	if err := NewOutbox(s, 1).Put(nil); err != nil {
		t.Fatal(err)
	}
	full := NewOutbox(s, 1)
	full.Put([]byte("{}"))
	if err := full.Put([]byte("{}")); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("full outbox: %v", err)
	}
}
