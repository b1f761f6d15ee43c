package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// A streaming request that waits gets nothing in its first second, then a
// comment per report; the worker's stream follows in the same response.
func TestKeepAlive_CommentsThenStream(t *testing.T) {
	rec := httptest.NewRecorder()
	k := &keepAlive{ResponseWriter: rec, model: "m"}
	now := time.Now()
	report := k.start(now)
	report(&wsapi.LeaseWait{Position: 3, ETAMS: 4200})
	if rec.Body.Len() != 0 {
		t.Fatalf("wrote %q before the request waited a second", rec.Body.String())
	}
	k.mu.Lock()
	k.since = now.Add(-2 * time.Second)
	k.mu.Unlock()
	report(&wsapi.LeaseWait{Position: 3, ETAMS: 4200, Loading: "qwen2.5-7b", LoadingHive: "gpu1", LoadingMS: 12400})
	k.stop()
	report(&wsapi.LeaseWait{Position: 1}) // after the wait: ignored
	k.Header().Set("Content-Type", "text/event-stream")
	k.WriteHeader(http.StatusOK)
	_, _ = k.Write([]byte("data: {\"x\":1}\n\n"))
	k.finish()
	want := ": rbee queued position=3 eta=4.2s\n: rbee loading qwen2.5-7b on gpu1 12s\n\ndata: {\"x\":1}\n\n"
	if rec.Code != http.StatusOK || rec.Body.String() != want || rec.Header().Get("Content-Type") != "text/event-stream" {
		t.Fatalf("got %d %q %q, want 200 %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String(), want)
	}
}

// An error after the comments committed the response to 200 arrives as the
// stream's last event, holding the OpenAI error object.
func TestKeepAlive_ErrorAfterCommit(t *testing.T) {
	rec := httptest.NewRecorder()
	k := &keepAlive{ResponseWriter: rec, model: "m"}
	report := k.start(time.Now().Add(-2 * time.Second))
	report(&wsapi.LeaseWait{Position: 1})
	k.stop()
	WriteError(k, http.StatusServiceUnavailable, "model_unavailable", "model m cannot start: it exited")
	k.finish()
	body := rec.Body.String()
	i := strings.Index(body, "data: ")
	if rec.Code != http.StatusOK || i < 0 || !strings.HasSuffix(body, "\n\n") {
		t.Fatalf("got %d %q", rec.Code, body)
	}
	var ev struct {
		Error struct{ Message, Code string }
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(body[i+len("data: "):])), &ev); err != nil || ev.Error.Code != "model_unavailable" ||
		!strings.Contains(ev.Error.Message, "it exited") {
		t.Fatalf("last event %q: %v %+v", body[i:], err, ev)
	}
}

// A request that never waited long is answered as before: status and body
// untouched.
func TestKeepAlive_NoWaitNoChange(t *testing.T) {
	rec := httptest.NewRecorder()
	k := &keepAlive{ResponseWriter: rec, model: "m"}
	k.start(time.Now())
	k.stop()
	WriteError(k, http.StatusNotFound, "model_not_found", "nope")
	k.finish()
	if rec.Code != http.StatusNotFound || !strings.HasPrefix(rec.Body.String(), "{") {
		t.Fatalf("got %d %q", rec.Code, rec.Body.String())
	}
}
