package proxy

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestRequestID_ClientsKeptWhenPrintable(t *testing.T) {
	for id, ok := range map[string]bool{
		"abc-123":                  true,
		"req_0123456789abcdef":     true,
		strings.Repeat("x", 128):   true,
		"":                         false,
		strings.Repeat("x", 129):   false,
		"with space":               false,
		"line\nbreak":              false,
		"caf\u00e9":                false,
		"{\"json\":\"printable\"}": true,
	} {
		if got := validRequestID(id); got != ok {
			t.Errorf("validRequestID(%q) = %v, want %v", id, got, ok)
		}
	}
	seen := map[string]bool{}
	for range 100 {
		id := newRequestID()
		if !regexp.MustCompile(`^req_[0-9a-f]{32}$`).MatchString(id) || seen[id] {
			t.Fatalf("newRequestID() = %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
}

// TestWriteError_NamesTheRequest: an error body carries the request id the
// answer's headers hold, and the observed writer notes its code.
func TestWriteError_NamesTheRequest(t *testing.T) {
	rec := &record{}
	w := httptest.NewRecorder()
	w.Header().Set(HeaderRequestID, "req-1")
	ka := &keepAlive{ResponseWriter: &obsWriter{ResponseWriter: w, rec: rec}}
	WriteError(ka, http.StatusNotFound, "model_not_found", "no such model")
	if !strings.Contains(w.Body.String(), `"request_id":"req-1"`) {
		t.Errorf("body %s names no request", w.Body.String())
	}
	if rec.errCode != "model_not_found" || rec.status != http.StatusNotFound || rec.bytesOut != int64(w.Body.Len()) {
		t.Errorf("record %+v", rec)
	}
	w = httptest.NewRecorder()
	WriteParamError(w, http.StatusBadRequest, "invalid_request_error", "bad", "model")
	if strings.Contains(w.Body.String(), "request_id") {
		t.Errorf("an answer without a request id got one: %s", w.Body.String())
	}
}

func TestOpenAccessLog_Specs(t *testing.T) {
	for _, spec := range []string{"", "off"} {
		if a, err := OpenAccessLog(spec, nil); a != nil || err != nil {
			t.Errorf("%q: %v, %v; want no log", spec, a, err)
		}
	}
	var out strings.Builder
	a, err := OpenAccessLog("stdout", &out)
	if err != nil {
		t.Fatal(err)
	}
	a.Logger.Info("request", "request_id", "r1")
	if !strings.HasPrefix(out.String(), `{"time":`) || !strings.Contains(out.String(), `"request_id":"r1"`) {
		t.Errorf("stdout got %q, want a JSON line", out.String())
	}
	if err := a.Reopen(); err != nil || a.Close() != nil {
		t.Errorf("reopen or close of stdout: %v", err)
	}
	if _, err := OpenAccessLog(t.TempDir()+"/no/such/dir/access.log", nil); err == nil {
		t.Error("a file in a missing folder opened")
	}
}
