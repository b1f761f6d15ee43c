package node

import (
	"context"
	"testing"
)

func TestBackoff_DoublesUpToCapAndResetsOnChange(t *testing.T) {
	var r backoff
	if got := r.next(); got != redialMin {
		t.Fatalf("first backoff = %v, want %v", got, redialMin)
	}
	never := make(chan struct{})
	if !r.wait(context.Background(), never) {
		t.Fatal("wait returned false with a live context")
	}
	if got := r.next(); got != 2*redialMin {
		t.Fatalf("after one wait = %v, want %v", got, 2*redialMin)
	}
	r.cur = redialMax
	changed := make(chan struct{})
	close(changed)
	if !r.wait(context.Background(), changed) {
		t.Fatal("wait returned false on a change")
	}
	if got := r.next(); got != redialMin {
		t.Fatalf("after a change = %v, want reset to %v", got, redialMin)
	}
	r.cur = redialMax * 4
	r.cur = min(r.next()*2, redialMax)
	if r.next() != redialMax {
		t.Fatalf("backoff %v above the cap %v", r.next(), redialMax)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r.wait(ctx, never) {
		t.Fatal("wait returned true after the context ended")
	}
}
