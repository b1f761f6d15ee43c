package proxy

// Usage accounting: the entry node reads the token usage of every answer it
// passes on (the "usage" object of a JSON answer, or of the last stream
// event that carries one), counts it in rbee_tokens_total and hands it to the
// node's UsageRecorder. A streaming chat completion or completion whose
// client did not ask for usage is asked for it all the same
// (stream_options.include_usage), and the usage-only event that adds to the
// stream is taken out again, so the client sees the stream it asked for.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/usage"
)

// UsageRecorder takes the usage of each request the node answered as entry
// node; it must not block (it is called at the end of every request).
type UsageRecorder interface {
	Record(usage.Sample)
}

// usageMetrics count tokens by key and model.
type usageMetrics struct {
	tokens *prometheus.CounterVec
}

func newUsageMetrics(reg prometheus.Registerer) (*usageMetrics, error) {
	m := &usageMetrics{tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rbee_tokens_total", Help: "Tokens of the answers this node passed on as entry node, as the workers reported them, by API key name (- without one), model and kind (prompt or completion).",
	}, []string{"key", "model", "kind"})}
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.tokens); err != nil {
		return nil, fmt.Errorf("register usage metrics: %w", err)
	}
	return m, nil
}

// askUsage returns the body to forward: for a streaming chat completion or
// completion that does not ask for usage, body with
// stream_options.include_usage set, and strip true (the usage event is the
// entry node's, not the client's). A body it cannot read is forwarded as it
// came (the worker's to refuse), with strip false.
//
// The new body is a copy the body budget does not count: it is made only for
// streams, a few dozen bytes longer than the body the budget holds.
func askUsage(path string, head *requestHead, body []byte) (out []byte, strip bool) {
	if head.Stream != true || (path != api.PathChat && path != api.PathCompletions) {
		return body, false
	}
	return injectIncludeUsage(body)
}

// includeUsage is the stream_options rbee adds.
const includeUsage = `{"include_usage":true}`

// injectIncludeUsage sets stream_options.include_usage in a JSON object body,
// keeping every other byte as it was; strip reports whether it changed the
// body.
func injectIncludeUsage(body []byte) (out []byte, strip bool) {
	dec := jsontext.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return body, false
	}
	open := dec.InputOffset()
	members := 0
	for ; dec.PeekKind() != '}'; members++ {
		name, err := dec.ReadToken()
		if err != nil {
			return body, false
		}
		if name.String() != "stream_options" {
			if err := dec.SkipValue(); err != nil {
				return body, false
			}
			continue
		}
		v, err := dec.ReadValue()
		if err != nil {
			return body, false
		}
		end := dec.InputOffset()
		start := end - int64(len(v))
		var repl []byte
		switch v.Kind() {
		case 'n':
			repl = []byte(includeUsage)
		case '{':
			var opts map[string]jsontext.Value
			if jsonv2.Unmarshal(v, &opts) != nil {
				return body, false
			}
			if u, ok := opts["include_usage"]; ok && u.Kind() == 't' {
				return body, false // the client asked for it: its to keep
			}
			opts["include_usage"] = jsontext.Value("true")
			if repl, err = jsonv2.Marshal(opts, jsonv2.Deterministic(true)); err != nil {
				return body, false
			}
		default:
			return body, false // a wrong type is the worker's to refuse
		}
		out = make([]byte, 0, len(body)-len(v)+len(repl))
		out = append(append(append(out, body[:start]...), repl...), body[end:]...)
		return out, true
	}
	// No stream_options: add it as the first member.
	ins := `"stream_options":` + includeUsage
	if members > 0 {
		ins += ","
	}
	out = make([]byte, 0, len(body)+len(ins))
	out = append(append(append(out, body[:open]...), ins...), body[open:]...)
	return out, true
}

type usageKey struct{}

// usageReq is what the entry node knows of a request for its usage sample.
type usageReq struct {
	strip bool
	wait  time.Duration
}

// withUsage marks r as an entry node's request that waited wait for its
// lease; strip says the usage event of its stream is rbee's, not the
// client's.
func withUsage(r *http.Request, strip bool, wait time.Duration) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), usageKey{}, usageReq{strip: strip, wait: wait}))
}

func usageOf(r *http.Request) usageReq {
	u, _ := r.Context().Value(usageKey{}).(usageReq)
	return u
}

// Bounds on what the tap holds per request: an event of a stream up to
// maxHeldEvent (events are a few hundred bytes; a longer one ends parsing
// for the stream, which passes on unchanged), and the last jsonTail bytes of
// a JSON answer, where "usage" comes after the choices or embeddings.
const (
	maxHeldEvent = 256 << 10
	jsonTail     = 64 << 10
)

// usageTap reads the usage of an answer as it passes on to the client. It
// never changes a byte but those of the usage event it strips, and anything
// it cannot read it passes on and leaves uncounted.
type usageTap struct {
	stream bool
	strip  bool
	off    bool // not parsing (any more)

	// A stream's incomplete event (held back until it is complete, so
	// that the usage event can be dropped whole), where its current line
	// starts, and what goes to the client from this read.
	pending, out []byte
	lineStart    int

	// A JSON answer's last bytes, and whether they are all of it.
	tail      []byte
	truncated bool

	found              bool
	prompt, completion int64

	// mig, when set, sees each event first and may rewrite or drop it
	// (migrate.go).
	mig *migration
	// bufs is where pending, out and tail came from, and go back (free).
	bufs *tapBuf
}

func newUsageTap(resp *http.Response, strip bool) *usageTap {
	t := &usageTap{
		stream: strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"),
		strip:  strip,
	}
	t.bufs = tapBufs.Get().(*tapBuf)
	t.pending, t.out, t.tail = t.bufs.pending, t.bufs.out, t.bufs.tail
	// An error has no usage, and a compressed body is not read.
	t.off = resp.StatusCode/100 != 2 || resp.Header.Get("Content-Encoding") != ""
	return t
}

// tapBuf holds a finished tap's buffers for the next: a stream's first read
// (up to 32 KiB) would otherwise allocate, and zero, two new ones for every
// answer.
type tapBuf struct{ pending, out, tail []byte }

var tapBufs = sync.Pool{New: func() any { return new(tapBuf) }}

// maxPooledTap bounds a buffer kept for the next tap: one that grew for an
// unusual answer is left to the collector.
const maxPooledTap = 128 << 10

// free hands t's buffers to the next tap. Nothing may use t's bytes after:
// the caller has written all it returned.
func (t *usageTap) free() {
	keep := func(b []byte) []byte {
		if cap(b) > maxPooledTap {
			return nil
		}
		return b[:0]
	}
	b := t.bufs
	if b == nil {
		return
	}
	b.pending, b.out, b.tail = keep(t.pending), keep(t.out), keep(t.tail)
	tapBufs.Put(b)
	t.pending, t.out, t.tail, t.bufs = nil, nil, nil, nil
}

// feed takes the next bytes of the answer and returns those to pass on now.
func (t *usageTap) feed(b []byte) []byte {
	if t.off {
		return b
	}
	if !t.stream {
		t.tail = append(t.tail, b...)
		if len(t.tail) > 2*jsonTail {
			t.tail = t.tail[:copy(t.tail, t.tail[len(t.tail)-jsonTail:])]
			t.truncated = true
		}
		return b
	}
	// pending holds the event in progress from its start; lineStart
	// is where its current line starts. Only the new bytes are
	// scanned, so an event that comes in many reads costs its length,
	// not its length times the reads.
	from := len(t.pending)
	t.pending = append(t.pending, b...)
	buf := t.pending
	t.out = t.out[:0]
	emitted, evStart := 0, 0
	for pos := from; pos < len(buf); {
		i := bytes.IndexByte(buf[pos:], '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimRight(buf[t.lineStart:pos+i], "\r")
		pos += i + 1
		t.lineStart = pos
		if len(line) > 0 {
			continue
		}
		// A blank line ends an event.
		if pos-evStart > maxHeldEvent {
			return t.giveUp(buf[emitted:])
		}
		if t.mig != nil {
			// Each event as migration has it (migrate.go).
			t.out = append(t.out, buf[emitted:evStart]...)
			if ev := t.mig.event(buf[evStart:pos]); ev != nil && !t.event(ev) {
				t.out = append(t.out, ev...)
			}
			emitted = pos
		} else if t.event(buf[evStart:pos]) {
			t.out = append(t.out, buf[emitted:evStart]...)
			emitted = pos
		}
		evStart = pos
	}
	if len(buf)-evStart > maxHeldEvent {
		return t.giveUp(buf[emitted:])
	}
	t.out = append(t.out, buf[emitted:evStart]...)
	t.pending = buf[:copy(buf, buf[evStart:])]
	t.lineStart -= evStart
	return t.out
}

// giveUp passes on rest and, from now on, everything unread: an event longer
// than maxHeldEvent is not an OpenAI stream's.
func (t *usageTap) giveUp(rest []byte) []byte {
	if t.mig != nil {
		t.mig.stop("an event of the answer is longer than any OpenAI stream's")
		t.mig = nil
	}
	t.out = append(t.out, rest...)
	t.pending, t.off = nil, true
	return t.out
}

// rest returns what is held back when the answer ends: a last event without
// its blank line, unless it is the usage event to strip.
func (t *usageTap) rest() []byte {
	if !t.stream {
		t.readJSON()
		return nil
	}
	// What is returned shares pending's array, kept for the next answer
	// (free, restart): the caller writes it before anything is fed again.
	p := t.pending
	t.pending = t.pending[:0]
	if len(p) > 0 && !t.off && t.mig != nil {
		p = t.mig.event(p)
	}
	if len(p) == 0 || (!t.off && t.event(p)) {
		return nil
	}
	return p
}

// restart drops what is held of an answer that broke off, before the
// continuation's events come.
func (t *usageTap) restart() {
	t.pending, t.lineStart = t.pending[:0], 0
}

// wireUsage is a usage object: chat completions', completions' and
// embeddings' names, or the Responses API's.
type wireUsage struct {
	PromptTokens     *int64 `json:"prompt_tokens"`
	CompletionTokens *int64 `json:"completion_tokens"`
	InputTokens      *int64 `json:"input_tokens"`
	OutputTokens     *int64 `json:"output_tokens"`
}

func (t *usageTap) take(u *wireUsage) {
	if u == nil {
		return
	}
	p, c := u.PromptTokens, u.CompletionTokens
	if p == nil {
		p = u.InputTokens
	}
	if c == nil {
		c = u.OutputTokens
	}
	if p == nil && c == nil {
		return
	}
	t.found = true
	t.prompt, t.completion = 0, 0
	if p != nil {
		t.prompt = max(*p, 0)
	}
	if c != nil {
		t.completion = max(*c, 0)
	}
}

// event reads one stream event (its lines, the blank one included) and
// reports whether to drop it: the usage-only chunk rbee asked for. The last
// event that carries usage counts: a chat or completion chunk's "usage", or a
// Responses API event's "response.usage" (response.completed).
func (t *usageTap) event(ev []byte) (drop bool) {
	_, data := sseData(ev)
	if !bytes.Contains(data, []byte(`"usage"`)) {
		return false
	}
	var chunk struct {
		Choices  *[]jsontext.Value `json:"choices"`
		Usage    *wireUsage        `json:"usage"`
		Response *struct {
			Usage *wireUsage `json:"usage"`
		} `json:"response"`
	}
	if jsonv2.Unmarshal(data, &chunk) != nil {
		return false
	}
	t.take(chunk.Usage)
	if chunk.Response != nil {
		t.take(chunk.Response.Usage)
	}
	return t.strip && chunk.Usage != nil && chunk.Choices != nil && len(*chunk.Choices) == 0
}

// readJSON reads the usage of a JSON answer: from the whole answer when the
// tail holds it all, else from the last "usage" member in the tail.
func (t *usageTap) readJSON() {
	if t.off || len(t.tail) == 0 {
		return
	}
	if !t.truncated {
		var ans struct {
			Usage *wireUsage `json:"usage"`
		}
		if jsonv2.Unmarshal(t.tail, &ans) == nil {
			t.take(ans.Usage)
		}
		return
	}
	// In valid JSON, "usage" followed by a colon is a member name (a
	// quote inside a string is escaped): the answer's own usage, which
	// comes last in OpenAI's shapes.
	i := bytes.LastIndex(t.tail, []byte(`"usage"`))
	if i < 0 {
		return
	}
	rest := bytes.TrimLeft(t.tail[i+len(`"usage"`):], " \t\r\n")
	rest, ok := bytes.CutPrefix(rest, []byte{':'})
	if !ok {
		return
	}
	v, err := jsontext.NewDecoder(bytes.NewReader(rest)).ReadValue()
	if err != nil || v.Kind() != '{' {
		return
	}
	var u wireUsage
	if jsonv2.Unmarshal(v, &u) == nil {
		t.take(&u)
	}
}

// recordUsage counts an entry node's answer.
func (p *Proxy) recordUsage(r *http.Request, model string, t *usageTap, ok bool, migrations int) {
	key := keyLabel(r)
	if t.found {
		p.usage.tokens.WithLabelValues(key, model, "prompt").Add(float64(t.prompt))
		p.usage.tokens.WithLabelValues(key, model, "completion").Add(float64(t.completion))
	}
	if p.cfg.Usage == nil {
		return
	}
	p.cfg.Usage.Record(usage.Sample{Key: key, Model: model, Prompt: t.prompt, Completion: t.completion,
		QueueWait: usageOf(r).wait, At: time.Now(), OK: ok, Migrations: migrations})
}
