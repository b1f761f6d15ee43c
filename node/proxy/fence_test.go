package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// fakeMembers is the gossip layer as the proxy sees it.
type fakeMembers struct {
	mu   sync.Mutex
	max  uint64
	gone map[string]chan struct{}
}

func (f *fakeMembers) FenceTerm() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.max
}

func (f *fakeMembers) WatchMember(name string) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone == nil {
		f.gone = map[string]chan struct{}{}
	}
	if f.gone[name] == nil {
		f.gone[name] = make(chan struct{})
	}
	return f.gone[name]
}

func (f *fakeMembers) depart(name string) {
	f.WatchMember(name)
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.gone[name])
}

type oneWorker struct{ url string }

func (o oneWorker) Endpoint(group, instance string) string { return o.url }

func testProxy(t *testing.T, name string, members *fakeMembers, workers WorkerEndpoints) *Proxy {
	t.Helper()
	p, err := New(Config{Name: name, Start: time.Unix(0, 0), QueueTimeout: time.Second, Workers: workers, Members: members})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// A hive refuses a lease from a queen whose term is below the highest it
// knows (a frozen or cut-off queen that has been replaced), and says the
// entry node may ask again; a current one is served.
func TestHiveProxy_RefusesGrantsFromAReplacedQueen(t *testing.T) {
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer worker.Close()
	members := &fakeMembers{max: 5}
	p := testProxy(t, "h", members, oneWorker{worker.URL})
	p.ReportLeases([]wsapi.ProcessStats{{Group: "g", Instance: "1", Slots: 1}}, time.Now())
	for _, tc := range []struct {
		term string
		want int
	}{{"4", http.StatusServiceUnavailable}, {"", http.StatusBadRequest}, {"x", http.StatusBadRequest}, {"5", http.StatusOK}, {"6", http.StatusOK}} {
		req := httptest.NewRequest(http.MethodPost, api.PathHiveProxy+api.PathChat, strings.NewReader(`{"model":"m"}`))
		req.Header.Set(hdrLease, "l-"+tc.term)
		req.Header.Set(hdrWorker, "g/1")
		req.Header.Set(hdrModel, "m")
		req.Header.Set(hdrEntry, "e")
		if tc.term != "" {
			req.Header.Set(hdrTerm, tc.term)
		}
		rec := httptest.NewRecorder()
		p.HandleHiveProxy(rec, req)
		if rec.Code != tc.want {
			t.Errorf("term %q: status %d (%s), want %d", tc.term, rec.Code, rec.Body, tc.want)
		}
		if tc.want == http.StatusServiceUnavailable && rec.Header().Get(hdrRetry) == "" {
			t.Errorf("term %q: refusal does not let the entry node ask again", tc.term)
		}
		if unserved := rec.Header().Get(hdrUnserved) != ""; unserved != (tc.want != http.StatusOK) {
			t.Errorf("term %q: %s %q is %v, want it only on refusals", tc.term, hdrUnserved, rec.Header().Get(hdrUnserved), unserved)
		}
	}
}

// A stream proxied through a hive that the cluster declares dead ends with
// an error for the client at once, rather than stalling behind the cut.
func TestForward_StreamEndsWhenTheHiveIsDeclaredDead(t *testing.T) {
	firstSent := make(chan struct{})
	release := make(chan struct{})
	hive := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: tok0\n\n")
		w.(http.Flusher).Flush()
		close(firstSent)
		// Then silence, as behind a cut link.
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hive.Close()
	defer close(release)
	members := &fakeMembers{}
	p := testProxy(t, "entry", members, nil)
	g := &wsapi.LeaseGrant{RequestID: "r", LeaseID: "l", Hive: "h", HiveAddr: strings.TrimPrefix(hive.URL, "http://"), Worker: "g/1", Model: "m"}
	entry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o, _ := p.forward(w, r, []byte(`{"model":"m","stream":true}`), g, time.Now(), &reply{w: w}); o == outcomeBroken {
			panic(http.ErrAbortHandler) // as tryWorkers does with a stream it does not migrate
		}
	}))
	defer entry.Close()

	resp, err := http.Post(entry.URL+api.PathChat, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-firstSent
	members.depart("h")
	sc := bufio.NewScanner(resp.Body)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if sc.Err() == nil {
		t.Fatalf("stream ended cleanly after %q; want it broken when the hive was declared dead", lines)
	}
	if len(lines) == 0 || lines[0] != "data: tok0" {
		t.Fatalf("got %q before the break, want the first event", lines)
	}
}

// A hive that refuses a lease without taking it up (a bad request, a body it
// would not read) leaves the release to the entry node, which makes it: the
// slot would otherwise stay leased until the entry node's session ends. A
// request the hive served, both release, the entry node as soon as its
// client has the answer (before the client's next request).
func TestForward_ReleasesLeasesTheHiveNeverTookUp(t *testing.T) {
	for _, tc := range []struct {
		name        string
		unserved    bool
		wantRelease bool
	}{{"refused", true, true}, {"served", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			hive := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.unserved {
					w.Header().Set(hdrUnserved, "1")
					WriteError(w, http.StatusRequestTimeout, "timeout", "body not received in time")
					return
				}
				fmt.Fprint(w, `{"ok":true}`)
			}))
			defer hive.Close()
			p := testProxy(t, "entry", &fakeMembers{}, nil)
			u := &fakeUplink{}
			p.leases.Attach(u)
			g := &wsapi.LeaseGrant{RequestID: "r", LeaseID: "l", Hive: "h", HiveAddr: strings.TrimPrefix(hive.URL, "http://"), Worker: "g/1", Model: "m"}
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, api.PathChat, strings.NewReader(`{}`))
			if o, _ := p.forward(rec, req, []byte(`{"model":"m"}`), g, time.Now(), &reply{w: rec}); o == outcomeRetry {
				t.Fatal("forward asks to try another worker, want the hive's answer passed on")
			}
			released := false
			for _, m := range u.messages() {
				if r, ok := m.(*wsapi.LeaseRelease); ok && r.LeaseID == "l" {
					released = true
				}
			}
			if released != tc.wantRelease {
				t.Fatalf("entry released the lease: %v, want %v (client got %d)", released, tc.wantRelease, rec.Code)
			}
			if rec.Header().Get(hdrUnserved) != "" {
				t.Fatal("rbee's header reached the client")
			}
		})
	}
}

// A standby lease that waited at the hive while its queen was replaced is
// refused when the slot comes (the new queen counts that slot free and may
// grant it), and the slot goes on to the next in line.
func TestHiveProxy_RefusesAStandbyWhoseQueenWasReplacedWhileItWaited(t *testing.T) {
	hold := make(chan struct{})
	var mu sync.Mutex
	var served []string
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Which request this is: the body names it (the hive passes on
		// only the headers a worker needs).
		var body struct{ Model string }
		_ = json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		served = append(served, body.Model)
		mu.Unlock()
		if body.Model == "first" {
			<-hold
		}
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer worker.Close()
	members := &fakeMembers{max: 5}
	p := testProxy(t, "h", members, oneWorker{worker.URL})
	p.ReportLeases([]wsapi.ProcessStats{{Group: "g", Instance: "1", Slots: 1}}, time.Now())
	send := func(name, term string, standby bool) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, api.PathHiveProxy+api.PathChat, strings.NewReader(`{"model":"`+name+`"}`))
		req.Header.Set(hdrLease, "l-"+name)
		req.Header.Set(hdrWorker, "g/1")
		req.Header.Set(hdrModel, "m")
		req.Header.Set(hdrEntry, "e")
		req.Header.Set(hdrTerm, term)
		if standby {
			req.Header.Set(hdrStandby, "1")
		}
		rec := httptest.NewRecorder()
		p.HandleHiveProxy(rec, req)
		return rec
	}
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() { first <- send("first", "5", false) }()
	testutil.Every(time.Millisecond).Eventually(t, 5*time.Second, "the first request at the worker", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(served) != 1 {
			return fmt.Errorf("%d served", len(served))
		}
		return nil
	})
	standby := make(chan *httptest.ResponseRecorder, 1)
	go func() { standby <- send("standby", "5", true) }()
	testutil.Every(time.Millisecond).Eventually(t, 5*time.Second, "the standby lease waiting", func() error {
		p.table.mu.Lock()
		defer p.table.mu.Unlock()
		if n := len(p.table.waiting["g/1"]); n != 1 {
			select {
			case rec := <-standby:
				t.Fatalf("the standby lease was answered at once: %d %s", rec.Code, rec.Body)
			default:
			}
			return fmt.Errorf("%d waiting", n)
		}
		return nil
	})
	members.mu.Lock()
	members.max = 6 // a new queen
	members.mu.Unlock()
	close(hold)
	if rec := <-first; rec.Code != http.StatusOK {
		t.Fatalf("first: %d %s", rec.Code, rec.Body)
	}
	rec := <-standby
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get(hdrRetry) == "" {
		t.Fatalf("standby of the replaced queen: %d %q, want 503 with %s", rec.Code, rec.Body, hdrRetry)
	}
	if rec := send("next", "6", false); rec.Code != http.StatusOK {
		t.Fatalf("the new queen's grant: %d %s, want its slot", rec.Code, rec.Body)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(served, ",") != "first,next" {
		t.Fatalf("the worker served %v, want first and next only", served)
	}
}

// A worker's redirect goes back as it is: a hop that followed it would send
// the request, body and all, wherever the worker pointed.
func TestHiveProxy_PassesAWorkersRedirectOn(t *testing.T) {
	var followed atomic.Int32
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed.Add(1)
			fmt.Fprint(w, `{"followed":true}`)
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	}))
	defer worker.Close()
	p := testProxy(t, "h", &fakeMembers{max: 1}, oneWorker{worker.URL})
	p.ReportLeases([]wsapi.ProcessStats{{Group: "g", Instance: "1", Slots: 1}}, time.Now())
	req := httptest.NewRequest(http.MethodPost, api.PathHiveProxy+api.PathChat, strings.NewReader(`{"model":"m"}`))
	req.Header.Set(hdrLease, "l")
	req.Header.Set(hdrWorker, "g/1")
	req.Header.Set(hdrModel, "m")
	req.Header.Set(hdrEntry, "e")
	req.Header.Set(hdrTerm, "1")
	rec := httptest.NewRecorder()
	p.HandleHiveProxy(rec, req)
	if rec.Code != http.StatusTemporaryRedirect || followed.Load() != 0 {
		t.Fatalf("status %d (%s), redirect followed %d times; want the 307 passed on, not followed", rec.Code, rec.Body, followed.Load())
	}
}

// slotWatcher is a client's ResponseWriter that notes, at each write,
// whether the hive still holds lease "l"'s slot.
type slotWatcher struct {
	*httptest.ResponseRecorder
	p       *Proxy
	held    []bool
	wrote   chan struct{} // closed at the first write
	written bool
}

func (w *slotWatcher) Write(b []byte) (int, error) {
	w.held = append(w.held, w.p.table.holds("l"))
	if !w.written {
		w.written = true
		close(w.wrote)
	}
	return w.ResponseRecorder.Write(b)
}

// A worker's slot is free once it has sent its whole answer, before the
// answer reaches the client (a request waiting for the slot starts then),
// and not before: a stream holds it until its last event.
func TestHiveProxy_FreesTheSlotWhenTheWorkerHasAnswered(t *testing.T) {
	var wrote chan struct{} // the client's first write, per case
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, _ := io.ReadAll(r.Body); !strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"choices":[{"message":{"content":"hi"}}]}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i, e := range []string{`{"n":1}`, `{"n":2}`, "[DONE]"} {
			fmt.Fprintf(w, "data: %s\n\n", e)
			w.(http.Flusher).Flush()
			if i == 0 {
				<-wrote // the stream goes on once its start reached the client
			}
		}
	}))
	defer worker.Close()
	for _, tc := range []struct {
		body string
		want []bool // held at each write to the client
	}{
		{`{"model":"m"}`, []bool{false}},
		{`{"model":"m","stream":true}`, []bool{true}},
	} {
		p := testProxy(t, "h", &fakeMembers{max: 1}, oneWorker{worker.URL})
		p.ReportLeases([]wsapi.ProcessStats{{Group: "g", Instance: "1", Slots: 1}}, time.Now())
		req := httptest.NewRequest(http.MethodPost, api.PathHiveProxy+api.PathChat, strings.NewReader(tc.body))
		req.Header.Set(hdrLease, "l")
		req.Header.Set(hdrWorker, "g/1")
		req.Header.Set(hdrModel, "m")
		req.Header.Set(hdrEntry, "e")
		req.Header.Set(hdrTerm, "1")
		wrote = make(chan struct{})
		w := &slotWatcher{ResponseRecorder: httptest.NewRecorder(), p: p, wrote: wrote}
		p.HandleHiveProxy(w, req)
		if w.Code != http.StatusOK || p.table.holds("l") {
			t.Fatalf("%q: status %d (%s), slot held after the answer: %v", tc.body, w.Code, w.Body, p.table.holds("l"))
		}
		// The stream's last event may come with the end of its body.
		if got := w.held; len(got) < len(tc.want) || !slices.Equal(got[:len(tc.want)], tc.want) || (!strings.Contains(tc.body, "stream") && len(got) != 1) {
			t.Errorf("%q: slot held at the client's writes %v, want %v first; body %q", tc.body, got, tc.want, w.Body)
		}
	}
}
