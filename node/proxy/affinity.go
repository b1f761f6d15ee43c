package proxy

import (
	"bytes"
	"container/list"
	"net/http"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/rbee/rbee/wsapi"
)

// A Responses API follow-up (previous_response_id) continues a response that
// only the worker which made it holds. The entry node remembers, for each
// /v1/responses answer that passes through it, which worker made it, and
// asks the queen for that worker when a follow-up names it. The memory is
// the entry node's own: a follow-up sent through another node lands on any
// worker serving the model.

// Bounds on the response memory. An hour covers a conversation a person
// holds; 100,000 entries of about 150 bytes are 15 MB at most, and the least
// recently used go first.
const (
	responseTTL     = time.Hour
	responseEntries = 100_000
	// maxResponseID bounds an id worth remembering: OpenAI's are 50 bytes.
	maxResponseID = 256
	// maxTapHead is how much of a JSON answer is kept to find its id,
	// which a response object puts first.
	maxTapHead = 256 << 10
	// maxTapLine bounds an event line kept to find the id in a stream.
	maxTapLine = 1 << 20
)

// responseMap is a bounded LRU of response id -> the worker that made it.
// It is safe for concurrent use.
type responseMap struct {
	mu   sync.Mutex
	ttl  time.Duration
	max  int
	ll   *list.List // of *responseEntry, most recently used first
	byID map[string]*list.Element
}

type responseEntry struct {
	id      string
	at      Placement
	expires time.Time
}

func newResponseMap(ttl time.Duration, max int) *responseMap {
	return &responseMap{ttl: ttl, max: max, ll: list.New(), byID: make(map[string]*list.Element)}
}

// put remembers that the worker at made response id.
func (m *responseMap) put(id string, at Placement, now time.Time) {
	// A placement the queen would refuse is not worth keeping: asking for
	// it would cost the node its session.
	if id == "" || len(id) > maxResponseID || wsapi.ValidPlacement(at.Hive, at.Worker) != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := &responseEntry{id: id, at: at, expires: now.Add(m.ttl)}
	if el, ok := m.byID[id]; ok {
		el.Value = e
		m.ll.MoveToFront(el)
		return
	}
	m.byID[id] = m.ll.PushFront(e)
	for m.ll.Len() > m.max {
		m.remove(m.ll.Back())
	}
}

// get returns the worker that made response id, if it is remembered.
func (m *responseMap) get(id string, now time.Time) (Placement, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.byID[id]
	if !ok {
		return Placement{}, false
	}
	e := el.Value.(*responseEntry)
	if !now.Before(e.expires) {
		m.remove(el)
		return Placement{}, false
	}
	m.ll.MoveToFront(el)
	return e.at, true
}

func (m *responseMap) remove(el *list.Element) {
	delete(m.byID, el.Value.(*responseEntry).id)
	m.ll.Remove(el)
}

// len counts the entries held, expired ones included.
func (m *responseMap) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ll.Len()
}

// responseTap is the client's ResponseWriter for a /v1/responses request:
// it passes everything on unchanged and reads, on the way, the id of the
// response object: the first thing in a JSON answer, or in a stream the
// response.created event (response.completed, and any other event carrying
// the response, will do too). The id is remembered against at, the worker
// serving the current attempt.
type responseTap struct {
	http.ResponseWriter
	ids *responseMap
	at  Placement

	status int
	stream bool
	done   bool   // id found, or given up
	buf    []byte // a JSON answer's head, or a stream's unfinished line
}

// Unwrap lets http.ResponseController reach the connection (flushes).
func (t *responseTap) Unwrap() http.ResponseWriter { return t.ResponseWriter }

func (t *responseTap) WriteHeader(code int) {
	if t.status == 0 {
		t.status = code
		t.stream = strings.HasPrefix(t.Header().Get("Content-Type"), "text/event-stream")
		t.done = code != http.StatusOK
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *responseTap) Write(b []byte) (int, error) {
	if t.status == 0 {
		t.WriteHeader(http.StatusOK)
	}
	if !t.done {
		if t.stream {
			t.scanLines(b)
		} else if n := min(len(b), maxTapHead-len(t.buf)); n > 0 {
			t.buf = append(t.buf, b[:n]...)
		}
	}
	return t.ResponseWriter.Write(b)
}

// scanLines reads complete event lines for one that carries the response.
func (t *responseTap) scanLines(b []byte) {
	for len(b) > 0 && !t.done {
		line, rest, complete := bytes.Cut(b, []byte{'\n'})
		b = rest
		if !complete {
			if len(t.buf)+len(line) > maxTapLine {
				t.giveUp()
				return
			}
			t.buf = append(t.buf, line...)
			return
		}
		if len(t.buf) > 0 {
			line = append(t.buf, line...)
			t.buf = t.buf[:0]
		}
		data, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok || !bytes.Contains(data, []byte(`"response"`)) {
			continue
		}
		var ev struct {
			Type     string `json:"type"`
			Response struct {
				ID string `json:"id"`
			} `json:"response"`
		}
		if jsonv2.Unmarshal(bytes.TrimSpace(data), &ev) == nil && strings.HasPrefix(ev.Type, "response.") && ev.Response.ID != "" {
			t.remember(ev.Response.ID)
		}
	}
}

// finish reads a JSON answer's id, once the answer has been copied.
func (t *responseTap) finish() {
	if t.done || t.stream || t.status != http.StatusOK {
		return
	}
	if id := topLevelID(t.buf); id != "" {
		t.remember(id)
	}
	t.giveUp()
}

func (t *responseTap) remember(id string) {
	t.ids.put(id, t.at, time.Now())
	t.giveUp()
}

func (t *responseTap) giveUp() {
	t.done = true
	t.buf = nil
}

// topLevelID returns the "id" string member of the JSON object that head
// begins, reading only as far as that member (head may be cut short).
func topLevelID(head []byte) string {
	dec := jsontext.NewDecoder(bytes.NewReader(head))
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return ""
	}
	for {
		name, err := dec.ReadToken()
		if err != nil || name.Kind() != '"' {
			return ""
		}
		if name.String() != "id" {
			if dec.SkipValue() != nil {
				return ""
			}
			continue
		}
		v, err := dec.ReadToken()
		if err != nil || v.Kind() != '"' {
			return ""
		}
		return v.String()
	}
}
