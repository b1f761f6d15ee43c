package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

// recordingWorker answers any POST with a small JSON document naming itself
// and records what it got, byte for byte.
type recordingWorker struct {
	name string
	srv  *httptest.Server
	mu   sync.Mutex
	got  []recorded
}

type recorded struct {
	path, contentType string
	body              []byte
}

func newRecordingWorker(t *testing.T, name string) *recordingWorker {
	rw := &recordingWorker{name: name}
	rw.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rw.mu.Lock()
		rw.got = append(rw.got, recorded{path: r.URL.Path, contentType: r.Header.Get("Content-Type"), body: b})
		rw.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"worker":%q,"path":%q}`, name, r.URL.Path)
	}))
	t.Cleanup(rw.srv.Close)
	return rw
}

func (rw *recordingWorker) last() (recorded, int) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if len(rw.got) == 0 {
		return recorded{}, 0
	}
	return rw.got[len(rw.got)-1], len(rw.got)
}

// serving is a hive's collector reporting workers at fixed addresses; the
// workers can be changed while the node runs.
type serving struct {
	mu      sync.Mutex
	workers []wsapi.ProcessStats
	eps     map[string]string
}

func (s *serving) add(group, instance, model, url string) *serving {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eps == nil {
		s.eps = map[string]string{}
	}
	s.workers = append(s.workers, wsapi.ProcessStats{Group: group, Instance: instance, Model: ptr(model), Slots: 1})
	s.eps[group+"/"+instance] = url
	return s
}

func (s *serving) clear() {
	s.mu.Lock()
	s.workers = nil
	s.mu.Unlock()
}

func (s *serving) Collect(context.Context) ([]wsapi.ProcessStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wsapi.ProcessStats(nil), s.workers...), nil
}

func (s *serving) Endpoint(group, instance string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eps[group+"/"+instance]
}

// send sends body to addr with method, labelled contentType (none when
// empty), and reads the answer.
func send(ctx context.Context, method, addr, path, contentType string, body []byte) (apiResult, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return apiResult{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return apiResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, body: string(b), header: resp.Header}, err
}

// audioForm is a transcription request as OpenAI's clients send it: the
// file first (bytes no text decoder would keep as they are), then model.
func audioForm(t *testing.T, model string) (body []byte, contentType string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("file", "hello.wav")
	if err != nil {
		t.Fatal(err)
	}
	audio := []byte("RIFF\x00\x01\x02\xff\xfe\r\n--not-the-boundary\r\n\x00WAVE")
	_, _ = fw.Write(bytes.Repeat(audio, 1000))
	if model != "" {
		_ = mw.WriteField("model", model)
	}
	_ = mw.WriteField("response_format", "json")
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), mw.FormDataContentType()
}

// TestRoute_EveryOpenAIPath: the Responses API, rerank and score, audio as a
// multipart form, and any other POST under /v1/ naming a model reach a
// worker of that model, body and Content-Type as the client sent them;
// rbee's own paths do not; through the entry node on the worker's hive and
// through an entry-only node.
func TestRoute_EveryOpenAIPath(t *testing.T) {
	wa, wb := newRecordingWorker(t, "wa"), newRecordingWorker(t, "wb")
	a, _, c := routeCluster(t, new(serving).add("llm", "wa", "ma", wa.srv.URL), new(serving).add("llm", "wb", "mb", wb.srv.URL))
	form, formType := audioForm(t, "mb")
	for _, entry := range []*nodetest.Node{a, c} {
		for _, tc := range []struct {
			path, contentType string
			body              []byte
			worker            *recordingWorker
			wantType          string
		}{
			{api.PathResponses, "application/json", []byte(`{"model":"ma","input":"hi"}`), wa, "application/json"},
			{"/v1/rerank", "application/json", []byte(`{"model":"mb","query":"q","documents":["a","b"]}`), wb, "application/json"},
			{"/v1/score", "", []byte(`{"model":"ma","text_1":"a","text_2":"b"}`), wa, "application/json"},
			{"/v1/foo", "application/x-www-form-urlencoded", []byte(`{"model":"mb","anything":[1,2]}`), wb, "application/json"},
			{"/v1/audio/transcriptions", formType, form, wb, formType},
			{"/v1/audio/translations", formType, form, wb, formType},
		} {
			t.Run(entry.Name()+tc.path, func(t *testing.T) {
				r, err := send(context.Background(), http.MethodPost, entry.HTTPAddr(), tc.path, tc.contentType, tc.body)
				want := fmt.Sprintf(`{"worker":%q,"path":%q}`, tc.worker.name, tc.path)
				if err != nil || r.status != 200 || r.body != want {
					t.Fatalf("POST %s: %d %q %v, want %s", tc.path, r.status, r.body, err, want)
				}
				got, _ := tc.worker.last()
				if got.path != tc.path || got.contentType != tc.wantType || !bytes.Equal(got.body, tc.body) {
					t.Fatalf("worker got %s %q, %d bytes (equal: %v); want %s %q, %d bytes", got.path, got.contentType,
						len(got.body), bytes.Equal(got.body, tc.body), tc.path, tc.wantType, len(tc.body))
				}
			})
		}
	}
	_, na := wa.last()
	_, nb := wb.last()
	for _, tc := range []struct {
		name, method, path, contentType string
		body                            []byte
		status                          int
		code                            any
	}{
		{"multipart without a model", "POST", "/v1/audio/transcriptions", "", nil, 400, nil},
		{"unknown model in a form", "POST", "/v1/audio/transcriptions", "", nil, 404, "model_not_found"},
		{"rbee's own path", "POST", "/v1/cluster", "application/json", []byte(`{"model":"ma"}`), 404, "not_found"},
		{"below rbee's own path", "POST", "/v1/admin/anything", "application/json", []byte(`{"model":"ma"}`), 404, "not_found"},
		{"dot segment", "POST", "/v1/x/%2e%2e/admin", "application/json", []byte(`{"model":"ma"}`), 404, "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, ct := tc.body, tc.contentType
			switch tc.name {
			case "multipart without a model":
				body, ct = audioForm(t, "")
			case "unknown model in a form":
				body, ct = audioForm(t, "nope")
			}
			r, err := send(context.Background(), tc.method, c.HTTPAddr(), tc.path, ct, body)
			var e struct {
				Error map[string]any `json:"error"`
			}
			if err != nil || r.status != tc.status || json.Unmarshal([]byte(r.body), &e) != nil || e.Error["code"] != tc.code {
				t.Fatalf("%s %s: %d %q %v, want %d with code %v", tc.method, tc.path, r.status, r.body, err, tc.status, tc.code)
			}
		})
	}
	if _, n := wa.last(); n != na {
		t.Errorf("worker wa got %d more requests", n-na)
	}
	if _, n := wb.last(); n != nb {
		t.Errorf("worker wb got %d more requests", n-nb)
	}
}

// TestRoute_WrongMethodIs405: the API's paths answer a wrong method with 405
// and Allow, in OpenAI's error shape; an unknown path stays 404.
func TestRoute_WrongMethodIs405(t *testing.T) {
	a := nodetest.Start(t, "a")
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", api.PathChat, 405, "POST"},
		{"GET", api.PathResponses, 405, "POST"},
		{"PUT", api.PathEmbeddings, 405, "POST"},
		{"GET", "/v1/audio/transcriptions", 405, "POST"},
		{"DELETE", api.PathModels, 405, "GET, HEAD"},
		{"POST", api.PathModels, 405, "GET, HEAD"},
		{"DELETE", api.PathModels + "/m", 405, "GET, HEAD"},
		{"GET", "/v1/nope", 404, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r, err := send(context.Background(), tc.method, a.HTTPAddr(), tc.path, "", nil)
			var e struct {
				Error struct {
					Message string `json:"message"`
					Type    string `json:"type"`
					Code    string `json:"code"`
				} `json:"error"`
			}
			if err != nil || r.status != tc.status || r.header.Get("Allow") != tc.allow || json.Unmarshal([]byte(r.body), &e) != nil {
				t.Fatalf("%d Allow %q %q %v, want %d Allow %q", r.status, r.header.Get("Allow"), r.body, err, tc.status, tc.allow)
			}
			if tc.status == 405 && (e.Error.Code != "method_not_allowed" || e.Error.Type != "invalid_request_error" || e.Error.Message == "") {
				t.Fatalf("error %+v, want code method_not_allowed", e.Error)
			}
		})
	}
}

// TestRoute_PreviousResponseStaysOnItsWorker: two simulated workers serve
// the model, one on each hive; a Responses follow-up (previous_response_id)
// goes to the worker that made the response, every time, plain or streamed,
// along a chain; a simulator refuses a response id it did not make, so a
// follow-up sent elsewhere fails. When that worker is gone, the follow-up
// goes to the other (which, holding no such response, says so).
func TestRoute_PreviousResponseStaysOnItsWorker(t *testing.T) {
	var sims []*sim.Simulator
	var cols []*serving
	for i := range 2 {
		s, err := sim.New(sim.Config{Model: "m", MaxTokens: 2})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(s.Handler())
		t.Cleanup(srv.Close)
		sims = append(sims, s)
		cols = append(cols, new(serving).add("sim", fmt.Sprint("s", i), "m", srv.URL))
	}
	a, _, c := routeCluster(t, cols[0], cols[1])
	responses := func(body string) (string, apiResult) {
		t.Helper()
		r, err := send(context.Background(), http.MethodPost, c.HTTPAddr(), api.PathResponses, "application/json", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if r.status != 200 {
			return "", r
		}
		data := r.body
		if strings.Contains(body, `"stream":true`) {
			// The last event carries the whole response.
			_, data, _ = strings.Cut(r.body, "event: response.completed\ndata: ")
		}
		var resp struct {
			ID       string `json:"id"`
			Response struct {
				ID string `json:"id"`
			} `json:"response"`
		}
		if err := json.Unmarshal([]byte(data), &resp); err != nil {
			t.Fatalf("response %s: %v", r.body, err)
		}
		return resp.ID + resp.Response.ID, r
	}
	served := func() [2]int64 { return [2]int64{sims[0].Stats().Served, sims[1].Stats().Served} }
	// made sends a new conversation and returns its id and the worker
	// that served it.
	made := func(stream bool) (string, int) {
		t.Helper()
		before := served()
		id, r := responses(fmt.Sprintf(`{"model":"m","input":"hi","stream":%v}`, stream))
		if id == "" {
			t.Fatalf("first response: %d %s", r.status, r.body)
		}
		maker := -1
		testutil.Eventually(t, 5*time.Second, "response counted", func() error {
			s := served()
			switch {
			case s[0] > before[0]:
				maker = 0
			case s[1] > before[1]:
				maker = 1
			default:
				return fmt.Errorf("served %v", s)
			}
			return nil
		})
		return id, maker
	}

	for _, stream := range []bool{false, true} {
		first, maker := made(stream)
		before := served()
		prev := first
		const followUps = 6
		for i := range followUps {
			// Half name the first response, half the one before.
			ref := prev
			if i%2 == 0 {
				ref = first
			}
			id, r := responses(fmt.Sprintf(`{"model":"m","input":"and?","previous_response_id":%q,"stream":%v}`, ref, stream))
			if id == "" {
				t.Fatalf("stream=%v follow-up %d of %s: %d %s", stream, i, ref, r.status, r.body)
			}
			prev = id
		}
		testutil.Eventually(t, 5*time.Second, "follow-ups on the maker", func() error {
			s := served()
			if got := s[maker] - before[maker]; got != followUps || s[1-maker] != before[1-maker] {
				return fmt.Errorf("served %v after %v; want all %d follow-ups on worker %d", s, before, followUps, maker)
			}
			return nil
		})
	}

	// The worker that made it leaves: the follow-up goes to the other,
	// which holds no such response and says so, rather than waiting.
	first, maker := made(false)
	cols[maker].clear()
	testutil.Eventually(t, 10*time.Second, "worker gone", func() error {
		if n, _ := queueTotals(a); n != 1 {
			return fmt.Errorf("%d slots", n)
		}
		return nil
	})
	_, r := responses(`{"model":"m","input":"and?","previous_response_id":"` + first + `"}`)
	if r.status != 404 || !strings.Contains(r.body, "previous_response_not_found") || sims[1-maker].Stats().Rejected != 1 {
		t.Fatalf("follow-up after its worker left: %d %s, want the other worker's 404", r.status, r.body)
	}
}

// TestRoute_BadBodiesNameTheField: a request whose body has a field of the
// wrong type, or no model, gets a 400 naming the field as OpenAI's param,
// in the client's words, not the JSON library's.
func TestRoute_BadBodiesNameTheField(t *testing.T) {
	a := nodetest.Start(t, "a")
	for _, tc := range []struct {
		body, param, msg string
	}{
		{`{"model":1,"messages":[]}`, "model", `"model" must be a string, not a number`},
		{`{"messages":[]}`, "model", `"model" is required`},
		{`{"model":"m","stream":"yes"}`, "", ""},
		{`{bad`, "", "body is not valid JSON: invalid character"},
	} {
		r, err := post(context.Background(), a.HTTPAddr(), api.PathChat, tc.body)
		if err != nil {
			t.Fatal(err)
		}
		if tc.msg == "" {
			continue // a wrong type rbee does not read is the worker's to refuse
		}
		var v struct {
			Error struct {
				Message string  `json:"message"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(r.body), &v); err != nil || r.status != http.StatusBadRequest {
			t.Fatalf("%s: %d %s", tc.body, r.status, r.body)
		}
		if !strings.HasPrefix(v.Error.Message, tc.msg) || strings.Contains(r.body, "jsontext") {
			t.Errorf("%s: message %q, want it to start %q", tc.body, v.Error.Message, tc.msg)
		}
		if (tc.param == "") != (v.Error.Param == nil) || (v.Error.Param != nil && *v.Error.Param != tc.param) {
			t.Errorf("%s: param %v, want %q", tc.body, v.Error.Param, tc.param)
		}
	}
}
