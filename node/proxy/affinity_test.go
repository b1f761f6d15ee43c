package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/node/api"
)

func TestResponseMap_BoundedAndExpiring(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := newResponseMap(time.Hour, 3)
	at := func(i int) Placement { return Placement{Hive: "h", Worker: fmt.Sprint("llm/", i)} }
	for i := range 3 {
		m.put(fmt.Sprint("resp_", i), at(i), now)
	}
	if _, ok := m.get("resp_0", now); !ok { // resp_0 is now the most recently used
		t.Fatal("resp_0 forgotten")
	}
	m.put("resp_3", at(3), now)
	if _, ok := m.get("resp_1", now); ok || m.len() != 3 {
		t.Fatalf("least recently used kept; %d entries", m.len())
	}
	if got, ok := m.get("resp_0", now.Add(59*time.Minute)); !ok || got != at(0) {
		t.Fatalf("resp_0 within the hour: %v %v", got, ok)
	}
	if _, ok := m.get("resp_0", now.Add(time.Hour)); ok || m.len() != 2 {
		t.Fatalf("resp_0 kept past the hour; %d entries", m.len())
	}
	m.put("", at(9), now)
	m.put(strings.Repeat("x", maxResponseID+1), at(9), now)
	m.put("resp_bad", Placement{Hive: "h h", Worker: "llm/1"}, now)
	m.put("resp_bad", Placement{Hive: "h", Worker: "1"}, now)
	if m.len() != 2 {
		t.Fatalf("empty or oversized ids, or placements the queen refuses, kept: %d entries", m.len())
	}
}

// TestResponseTap_FindsTheID: the response id is read from a JSON answer
// (wherever its id member is, read no further) and from a stream's events
// however the writes cut them, and never from an error.
func TestResponseTap_FindsTheID(t *testing.T) {
	stream := "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_s\",\"object\":\"response\",\"output\":[]}}\n\n" +
		"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n"
	long := `{"object":"response","output":[{"content":[{"text":"` + strings.Repeat("y", maxTapHead) + `"}]}],"id":"resp_late"}`
	for _, tc := range []struct {
		name, contentType, body string
		status, chunk           int
		want                    string
	}{
		{"JSON", "application/json", `{"id":"resp_j","object":"response","output":[]}`, 200, 7, "resp_j"},
		{"JSON, id after other members", "application/json", `{"object":"response","usage":{"id":"no"},"id":"resp_k"}`, 200, 1 << 20, "resp_k"},
		{"JSON, id past what is kept", "application/json", long, 200, 4096, ""},
		{"stream cut anywhere", "text/event-stream", stream, 200, 5, "resp_s"},
		{"stream with CRLF", "text/event-stream; charset=utf-8", strings.ReplaceAll(stream, "\n", "\r\n"), 200, 64, "resp_s"},
		{"error", "application/json", `{"id":"resp_e","error":{"message":"no"}}`, 400, 64, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids := newResponseMap(time.Hour, 10)
			rec := httptest.NewRecorder()
			tap := &responseTap{ResponseWriter: rec, ids: ids, at: Placement{Hive: "b", Worker: "llm/1"}}
			tap.Header().Set("Content-Type", tc.contentType)
			tap.WriteHeader(tc.status)
			for b := []byte(tc.body); len(b) > 0; {
				n := min(tc.chunk, len(b))
				if _, err := tap.Write(b[:n]); err != nil {
					t.Fatal(err)
				}
				b = b[n:]
			}
			tap.finish()
			if rec.Body.String() != tc.body || rec.Code != tc.status {
				t.Fatalf("passed on %d, %d bytes; want the body unchanged", rec.Code, rec.Body.Len())
			}
			got := ""
			for _, id := range []string{"resp_j", "resp_k", "resp_late", "resp_s", "resp_e"} {
				if at, ok := ids.get(id, time.Now()); ok && at.Worker == "llm/1" {
					got = id
				}
			}
			if got != tc.want || ids.len() > 1 {
				t.Fatalf("remembered %q (%d entries), want %q", got, ids.len(), tc.want)
			}
			if _, ok := http.ResponseWriter(tap).(interface{ Unwrap() http.ResponseWriter }); !ok {
				t.Fatal("tap hides the connection from http.ResponseController")
			}
		})
	}
}

func TestReadHead(t *testing.T) {
	form := "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nmodel\r\n--XyZ\r\n" +
		"Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n"
	for _, tc := range []struct {
		name, contentType, body string
		model, previous         string
		err                     string
	}{
		{"JSON", "application/json", `{"model":"m","previous_response_id":"resp_1"}`, "m", "resp_1", ""},
		{"JSON whatever the type says", "application/x-www-form-urlencoded", `{"model":"m"}`, "m", "", ""},
		{"previous_response_id null", "", `{"model":"m","previous_response_id":null}`, "m", "", ""},
		{"not JSON", "application/json", `model=m`, "", "", "not valid JSON"},
		{"form, model after a file part named like it", `multipart/form-data; boundary=XyZ`, form, "whisper-1", "", ""},
		{"form without a model", `multipart/form-data; boundary=XyZ`, "--XyZ--\r\n", "", "", ""},
		{"broken form", `multipart/form-data; boundary=XyZ`, "--XyZ\r\nno headers end", "", "", "multipart body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := readHead(tc.contentType, []byte(tc.body))
			if (err != nil) != (tc.err != "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("err %v, want %q", err, tc.err)
			}
			if h.Model != tc.model || h.PreviousResponseID != tc.previous {
				t.Fatalf("head %+v, want model %q, previous %q", h, tc.model, tc.previous)
			}
		})
	}
}

func TestInferencePath(t *testing.T) {
	for path, want := range map[string]bool{
		api.PathChat: true, api.PathResponses: true, "/v1/rerank": true, "/v1/audio/transcriptions": true, "/v1/foo": true,
		"/v1/": false, "/v2/chat": false, "/chat/completions": false, "/v1/models": false, "/v1/models/x": false,
		"/v1/cluster": false, "/v1/admin/join": false, "/v1/hive/proxy/v1/chat/completions": false, "/v1/heartbeats/stream": false,
		"/v1/a//b": false, "/v1/a/../admin": false, "/v1/a/": false, "/v1/a b": false, "/v1/" + strings.Repeat("a", 300): false,
		"/v1/administrator": true,
	} {
		if got := InferencePath(path); got != want {
			t.Errorf("InferencePath(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestMultipartBoundary(t *testing.T) {
	for _, tc := range []struct {
		ct, want string
		ok       bool
	}{
		{"multipart/form-data; boundary=XyZ", "XyZ", true},
		{" \tMultipart/Form-Data; boundary=\"a b\"", "a b", true},
		{"multipart/form-data", "", false},
		{"multipart/mixed; boundary=XyZ", "", false},
		{"application/json", "", false},
		{"multipart/", "", false},
		{"multi", "", false},
		{"", "", false},
	} {
		if got, ok := multipartBoundary(tc.ct); got != tc.want || ok != tc.ok {
			t.Errorf("%q: %q %v, want %q %v", tc.ct, got, ok, tc.want, tc.ok)
		}
	}
}
