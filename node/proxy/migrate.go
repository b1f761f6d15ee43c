package proxy

// Request migration: when the worker generating a stream breaks off (its
// hive dies or is declared dead, the connection resets, the worker exits, an
// error event arrives mid-stream), the entry node, which has passed on every
// token of the answer, asks for another worker and sends it a continuation:
// the request with the text already sent appended (an assistant message for
// chat and the Responses API, the prompt's end for completions) and its
// token limit reduced by the tokens sent. The continuation's events are
// rewritten to belong to the first answer (its id, created and model, no
// second role chunk, text events of a Responses stream naming its response
// and item), so the client sees one stream.
//
// What is kept per stream is the text sent so far (bounded by
// Config.MigrationMaxBytes) and a few ids; the request body is held anyway
// until the request ends.

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// Defaults of the migration settings.
const (
	DefaultMigrationLimit    = 2
	DefaultMigrationMaxBytes = 1 << 20
)

// hdrMigrate: "off" on a client's request turns migration off for it.
const hdrMigrate = "X-Rbee-Migrate"

// Which API a migratable stream speaks.
type streamAPI int

const (
	apiChat streamAPI = iota
	apiCompletions
	apiResponses
)

// migration is one stream's record of what its client has been sent, and
// the rewriting of a continuation's events. Only the request's handler uses
// it.
type migration struct {
	api      streamAPI
	left     int // continuations still allowed
	maxBytes int
	body     []byte // the request as first forwarded

	// why is set once the stream cannot be migrated any more, saying why.
	why string

	// The first answer's identity, which every event the client gets
	// carries: chat and completion chunks' id, created and model (raw
	// JSON), a Responses stream's response id, message item id and the
	// last sequence number sent.
	id, created, model jsontext.Value
	respID, itemID     string
	seq                int64

	text   strings.Builder // the answer's text sent so far
	tokens int64           // chunks that carried text: one token each, as engines stream them

	// Where the current attempt starts: the text and tokens sent before
	// it, and how many of its events have passed.
	cont       bool // the current attempt is a continuation
	textBefore int
	tokBefore  int64

	finished bool // a finish_reason, or the response's last event, was sent
	done     bool // [DONE] was sent
	// broke is an error event the worker sent mid-stream, held back:
	// the stream is continued instead, or it goes to the client as the
	// stream's end when it cannot be.
	broke []byte

	scratch wireChunk    // reused by chunk
	scan    chunkScanner // reads chunks into scratch
}

// newMigration returns the migration record of a streaming request, or nil
// when it will not be migrated: migration is off, the client opted out, or
// the request is not a stream the entry node can continue.
func (p *Proxy) newMigration(r *http.Request, a *admission) *migration {
	if p.cfg.MigrationLimit <= 0 || !a.stream || strings.EqualFold(r.Header.Get(hdrMigrate), "off") {
		return nil
	}
	m := &migration{left: p.cfg.MigrationLimit, maxBytes: p.cfg.MigrationMaxBytes, body: a.body}
	if m.maxBytes <= 0 {
		m.maxBytes = DefaultMigrationMaxBytes
	}
	switch r.URL.Path {
	case api.PathChat:
		m.api = apiChat
	case api.PathCompletions:
		m.api = apiCompletions
	case api.PathResponses:
		m.api = apiResponses
		if a.previousID != "" {
			// Another worker does not hold the response it follows.
			return nil
		}
	default:
		return nil
	}
	return m
}

// stop marks the stream as not migratable, keeping the first reason.
func (m *migration) stop(why string) {
	if m.why == "" {
		m.why = why
	}
}

// ended reports whether the answer reached its end: the client has it all.
func (m *migration) ended() bool { return m.finished || m.done }

// beginContinuation starts rewriting the events of a continuation. When
// the client has had nothing of the first answer, the continuation is its
// answer as it comes, opening events and ids included.
func (m *migration) beginContinuation() {
	m.cont = m.id != nil || m.respID != "" || m.tokens > 0
	m.textBefore, m.tokBefore = m.text.Len(), m.tokens
	m.broke = nil
}

// addText records text sent to the client.
func (m *migration) addText(s string) {
	if s == "" {
		return
	}
	m.tokens++
	if m.why != "" {
		return
	}
	if m.text.Len()+len(s) > m.maxBytes {
		m.stop(fmt.Sprintf("the answer passed %d bytes (--migration-max-bytes)", m.maxBytes))
		m.text = strings.Builder{}
		return
	}
	m.text.WriteString(s)
}

// event takes one complete event of the answer (its lines, the blank one
// included) and returns what the client gets instead: ev itself, a
// rewritten event, or nil to drop it.
func (m *migration) event(ev []byte) []byte {
	name, data := sseData(ev)
	if data == nil {
		return ev // a comment, or nothing
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		m.done = true
		return ev
	}
	if m.api == apiResponses {
		return m.responseEvent(ev, name, data)
	}
	return m.chunk(ev, data)
}

// sseData returns an event's name and its data lines joined, nil when it
// has none.
func sseData(ev []byte) (name string, data []byte) {
	lines := 0
	for line := range bytes.Lines(ev) {
		line = bytes.TrimRight(line, "\r\n")
		if n, ok := bytes.CutPrefix(line, []byte("event:")); ok {
			name = string(bytes.TrimSpace(n))
			continue
		}
		d, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		d = bytes.TrimPrefix(d, []byte{' '})
		if lines == 0 {
			data = d
		} else {
			data = append(append(bytes.Clone(data), '\n'), d...)
		}
		lines++
	}
	return name, data
}

// wireChunk is what migration reads of a chat completion or completion
// chunk.
//
// It is decoded for every chunk of every stream, so it holds values, not
// pointers, and one per stream is reused: a chunk costs no allocation but
// its text. A JSON null reads as the zero value, which means the same here.
type wireChunk struct {
	ID      jsontext.Value `json:"id"`
	Created jsontext.Value `json:"created"`
	Model   jsontext.Value `json:"model"`
	Choices []wireChoice   `json:"choices"`
	Usage   jsontext.Value `json:"usage"`
	Error   jsontext.Value `json:"error"`
}

// reset empties c for the next chunk, keeping its buffers.
func (c *wireChunk) reset() {
	*c = wireChunk{ID: c.ID[:0], Created: c.Created[:0], Model: c.Model[:0], Choices: c.Choices[:0],
		Usage: c.Usage[:0], Error: c.Error[:0]}
}

type wireChoice struct {
	Index int `json:"index"`
	Delta struct {
		Role             string         `json:"role"`
		Content          string         `json:"content"`
		ReasoningContent string         `json:"reasoning_content"`
		Reasoning        string         `json:"reasoning"`
		ToolCalls        jsontext.Value `json:"tool_calls"`
		FunctionCall     jsontext.Value `json:"function_call"`
	} `json:"delta"`
	Text         string `json:"text"`
	FinishReason string `json:"finish_reason"`
}

func present(v jsontext.Value) bool { return len(v) > 0 && v.Kind() != 'n' }

// chunk records and, in a continuation, rewrites a chat completion or
// completion chunk.
func (m *migration) chunk(ev, data []byte) []byte {
	c := &m.scratch
	c.reset()
	if err := m.scan.decode(data, c); err != nil {
		m.stop("an event of the answer is not a JSON chunk")
		return ev
	}
	if present(c.Error) {
		m.broke = ev
		return nil
	}
	if m.id == nil && !m.cont {
		m.id, m.created, m.model = bytes.Clone(c.ID), bytes.Clone(c.Created), bytes.Clone(c.Model)
	}
	roleOnly := false
	for i := range c.Choices {
		ch := &c.Choices[i]
		if ch.Index != 0 || len(c.Choices) > 1 {
			m.stop("the answer has several choices")
		}
		if ch.FinishReason != "" {
			m.finished = true
		}
		m.addText(ch.Text)
		d := &ch.Delta
		if present(d.ToolCalls) || present(d.FunctionCall) {
			m.stop("a tool call was being sent")
		}
		if d.ReasoningContent != "" || d.Reasoning != "" {
			// Engines take no partial reasoning to continue from.
			m.stop("reasoning was being sent")
		}
		m.addText(d.Content)
		roleOnly = d.Role != "" && d.Content == "" && !present(d.ToolCalls) && ch.FinishReason == "" && !present(c.Usage) && len(c.Choices) == 1
	}
	if !m.cont {
		return ev
	}
	if roleOnly {
		return nil // the client has had its role chunk
	}
	return m.rewriteChunk(ev, data, present(c.Usage))
}

// rewriteChunk gives a continuation's chunk the first answer's id, created
// and model, drops a repeated role, and counts usage for the whole answer.
func (m *migration) rewriteChunk(ev, data []byte, usage bool) []byte {
	var obj map[string]jsontext.Value
	if jsonv2.Unmarshal(data, &obj) != nil {
		return ev
	}
	for k, v := range map[string]jsontext.Value{"id": m.id, "created": m.created, "model": m.model} {
		if v != nil {
			obj[k] = v
		}
	}
	if raw, ok := obj["choices"]; ok && bytes.Contains(raw, []byte(`"role"`)) {
		var choices []map[string]jsontext.Value
		if jsonv2.Unmarshal(raw, &choices) == nil {
			for _, ch := range choices {
				var delta map[string]jsontext.Value
				if d, ok := ch["delta"]; ok && jsonv2.Unmarshal(d, &delta) == nil {
					delete(delta, "role")
					ch["delta"], _ = jsonv2.Marshal(delta, jsonv2.Deterministic(true))
				}
			}
			obj["choices"], _ = jsonv2.Marshal(choices, jsonv2.Deterministic(true))
		}
	}
	if usage && !zeroUsage(obj["usage"]) {
		// Ollama's completions carry a zero usage on every chunk
		// before the real one: only the real one is the whole
		// answer's.
		obj["usage"] = m.wholeUsage(obj["usage"], false)
	}
	out, err := jsonv2.Marshal(obj, jsonv2.Deterministic(true))
	if err != nil {
		return ev
	}
	return sseEvent("", out)
}

// wholeUsage rewrites a continuation's usage object as the whole answer's:
// its prompt held the text already sent, which the client counts as
// completion. Tokens are estimated as the chunks that carried text, one
// each, as engines stream them.
func (m *migration) wholeUsage(raw jsontext.Value, responses bool) jsontext.Value {
	var u map[string]jsontext.Value
	if jsonv2.Unmarshal(raw, &u) != nil {
		return raw
	}
	pk, ck, tk := "prompt_tokens", "completion_tokens", "total_tokens"
	if responses {
		pk, ck, tk = "input_tokens", "output_tokens", "total_tokens"
	}
	num := func(k string) int64 {
		n, _ := strconv.ParseInt(string(u[k]), 10, 64)
		return n
	}
	prompt := max(num(pk)-m.tokBefore, 0)
	completion := num(ck) + m.tokBefore
	u[pk] = jsontext.Value(strconv.FormatInt(prompt, 10))
	u[ck] = jsontext.Value(strconv.FormatInt(completion, 10))
	if _, ok := u[tk]; ok {
		u[tk] = jsontext.Value(strconv.FormatInt(prompt+completion, 10))
	}
	out, err := jsonv2.Marshal(u, jsonv2.Deterministic(true))
	if err != nil {
		return raw
	}
	return out
}

// zeroUsage reports whether a usage object counts nothing yet.
func zeroUsage(raw jsontext.Value) bool {
	var u wireUsage
	if jsonv2.Unmarshal(raw, &u) != nil {
		return false
	}
	for _, n := range []*int64{u.PromptTokens, u.CompletionTokens, u.InputTokens, u.OutputTokens} {
		if n != nil && *n != 0 {
			return false
		}
	}
	return true
}

// sseEvent builds an event of one data line, named when name is set.
func sseEvent(name string, data []byte) []byte {
	out := make([]byte, 0, len(name)+len(data)+16)
	if name != "" {
		out = append(append(append(out, "event: "...), name...), '\n')
	}
	return append(append(append(out, "data: "...), data...), "\n\n"...)
}

// wireResponseEvent is what migration reads of a Responses API event.
type wireResponseEvent struct {
	Type           string  `json:"type"`
	SequenceNumber *int64  `json:"sequence_number"`
	Delta          *string `json:"delta"`
	Item           *struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	} `json:"item"`
	Response *struct {
		ID string `json:"id"`
	} `json:"response"`
}

// responseEvent records and, in a continuation, rewrites a Responses API
// event.
func (m *migration) responseEvent(ev []byte, name string, data []byte) []byte {
	var e wireResponseEvent
	if err := jsonv2.Unmarshal(data, &e); err != nil {
		m.stop("an event of the answer is not a JSON event")
		return ev
	}
	switch e.Type {
	case "error", "response.failed":
		m.broke = ev
		return nil
	case "response.completed", "response.incomplete":
		m.finished = true
	case "response.output_text.delta":
		if e.Delta != nil {
			m.addText(*e.Delta)
		}
	case "response.output_item.added":
		if e.Item != nil {
			switch {
			case e.Item.Type == "message" && m.itemID == "":
				if !m.cont {
					m.itemID = e.Item.ID
				}
			case e.Item.Type == "message":
			default:
				// A function call or reasoning item: nothing to
				// continue it from.
				m.stop("a " + e.Item.Type + " item was being sent")
			}
		}
	}
	if !m.cont {
		if e.Type == "response.created" && e.Response != nil {
			m.respID = e.Response.ID
		}
		if e.SequenceNumber != nil {
			m.seq = *e.SequenceNumber
		}
		return ev
	}
	switch e.Type {
	case "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added":
		return nil // the client has had the first answer's
	}
	var obj map[string]jsontext.Value
	if jsonv2.Unmarshal(data, &obj) != nil {
		return ev
	}
	m.seq++
	obj["sequence_number"] = jsontext.Value(strconv.FormatInt(m.seq, 10))
	if _, ok := obj["item_id"]; ok && m.itemID != "" {
		obj["item_id"] = quote(m.itemID)
	}
	prefix := m.text.String()[:min(m.textBefore, m.text.Len())]
	switch e.Type {
	case "response.output_text.done":
		obj["text"] = prefixString(obj["text"], prefix)
	case "response.content_part.done":
		obj["part"] = prefixMember(obj["part"], "text", prefix)
	case "response.output_item.done":
		obj["item"] = m.rewriteItem(obj["item"], prefix)
	case "response.completed", "response.incomplete":
		obj["response"] = m.rewriteResponse(obj["response"], prefix)
	}
	out, err := jsonv2.Marshal(obj, jsonv2.Deterministic(true))
	if err != nil {
		return ev
	}
	return sseEvent(name, out)
}

// rewriteItem gives a continuation's message item the first answer's id
// and text.
func (m *migration) rewriteItem(raw jsontext.Value, prefix string) jsontext.Value {
	var it map[string]jsontext.Value
	if jsonv2.Unmarshal(raw, &it) != nil {
		return raw
	}
	if string(it["type"]) != `"message"` {
		return raw
	}
	if m.itemID != "" {
		it["id"] = quote(m.itemID)
	}
	var content []map[string]jsontext.Value
	if jsonv2.Unmarshal(it["content"], &content) == nil {
		for _, part := range content {
			if string(part["type"]) == `"output_text"` {
				part["text"] = prefixString(part["text"], prefix)
				break
			}
		}
		it["content"], _ = jsonv2.Marshal(content, jsonv2.Deterministic(true))
	}
	out, err := jsonv2.Marshal(it, jsonv2.Deterministic(true))
	if err != nil {
		return raw
	}
	return out
}

// rewriteResponse gives a continuation's final response object the first
// answer's id, its whole text and usage.
func (m *migration) rewriteResponse(raw jsontext.Value, prefix string) jsontext.Value {
	var r map[string]jsontext.Value
	if jsonv2.Unmarshal(raw, &r) != nil {
		return raw
	}
	if m.respID != "" {
		r["id"] = quote(m.respID)
	}
	var output []jsontext.Value
	if jsonv2.Unmarshal(r["output"], &output) == nil {
		for i := range output {
			output[i] = m.rewriteItem(output[i], prefix)
		}
		r["output"], _ = jsonv2.Marshal(output)
	}
	if u, ok := r["usage"]; ok && u.Kind() == '{' {
		r["usage"] = m.wholeUsage(u, true)
	}
	out, err := jsonv2.Marshal(r, jsonv2.Deterministic(true))
	if err != nil {
		return raw
	}
	return out
}

func quote(s string) jsontext.Value {
	b, _ := jsonv2.Marshal(s)
	return b
}

// prefixString returns the JSON string raw with prefix before its text.
func prefixString(raw jsontext.Value, prefix string) jsontext.Value {
	var s string
	if jsonv2.Unmarshal(raw, &s) != nil {
		return raw
	}
	return quote(prefix + s)
}

// prefixMember is prefixString on member name of the object raw.
func prefixMember(raw jsontext.Value, name, prefix string) jsontext.Value {
	var obj map[string]jsontext.Value
	if jsonv2.Unmarshal(raw, &obj) != nil {
		return raw
	}
	if v, ok := obj[name]; ok {
		obj[name] = prefixString(v, prefix)
	}
	out, err := jsonv2.Marshal(obj, jsonv2.Deterministic(true))
	if err != nil {
		return raw
	}
	return out
}

// limitNames are the fields that bound an answer's length, in each API and
// engine's spelling.
var limitNames = []string{"max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens"}

// continuation builds the request that continues the answer from the text
// sent: the same request with that text appended and its token limit
// reduced, the same sampling parameters and seed. It fails when the request
// cannot be continued.
func (m *migration) continuation() ([]byte, error) {
	var req map[string]jsontext.Value
	if err := jsonv2.Unmarshal(m.body, &req); err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	for _, k := range limitNames {
		v, ok := req[k]
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || n <= 0 {
			continue // none, or llama-server's -1: until the model stops
		}
		req[k] = jsontext.Value(strconv.FormatInt(max(n-m.tokens, 1), 10))
	}
	sent := m.text.String()
	switch m.api {
	case apiChat:
		var msgs []jsontext.Value
		if err := jsonv2.Unmarshal(req["messages"], &msgs); err != nil {
			return nil, fmt.Errorf("messages: %w", err)
		}
		if sent != "" {
			msg, _ := jsonv2.Marshal(map[string]string{"role": "assistant", "content": sent}, jsonv2.Deterministic(true))
			msgs = append(msgs, msg)
			// vLLM and SGLang continue a last assistant message
			// only when told; llama-server and Ollama continue it
			// as it is, and ignore these (see docs/migration.md).
			req["continue_final_message"] = jsontext.Value("true")
			req["add_generation_prompt"] = jsontext.Value("false")
		}
		req["messages"], _ = jsonv2.Marshal(msgs)
	case apiCompletions:
		var prompt string
		if err := jsonv2.Unmarshal(req["prompt"], &prompt); err != nil {
			var one []string
			if jsonv2.Unmarshal(req["prompt"], &one) != nil || len(one) != 1 {
				return nil, fmt.Errorf("the prompt is not one string")
			}
			prompt = one[0]
		}
		req["prompt"] = quote(prompt + sent)
	case apiResponses:
		var input []jsontext.Value
		raw := req["input"]
		var s string
		switch {
		case jsonv2.Unmarshal(raw, &s) == nil:
			msg, _ := jsonv2.Marshal(map[string]string{"role": "user", "content": s}, jsonv2.Deterministic(true))
			input = []jsontext.Value{msg}
		case jsonv2.Unmarshal(raw, &input) == nil:
		default:
			return nil, fmt.Errorf("the input is neither text nor a list")
		}
		if sent != "" {
			// An output message still in progress: vLLM continues
			// only an assistant item so marked; Ollama and
			// llama-server continue any trailing assistant message.
			msg, _ := jsonv2.Marshal(map[string]any{"type": "message", "role": "assistant", "status": "in_progress",
				"content": []map[string]string{{"type": "output_text", "text": sent}}}, jsonv2.Deterministic(true))
			input = append(input, msg)
		}
		req["input"], _ = jsonv2.Marshal(input)
	}
	return jsonv2.Marshal(req, jsonv2.Deterministic(true))
}

// pendingMigration is a migration whose continuation has not reached the
// client yet.
type pendingMigration struct {
	wsapi.Migration
	since time.Time
}

// migrate decides what becomes of a stream that broke off on g's worker: it
// returns the continuation to send another worker, or false when the
// client's answer ends here (it has had all of it, or an error).
func (p *Proxy) migrate(rp *reply, g *wsapi.LeaseGrant) ([]byte, bool) {
	m := rp.mig
	from := g.Hive + "/" + g.Worker
	if m == nil {
		p.metrics.migrations.WithLabelValues(g.Model, "not_migratable").Inc()
		panic(http.ErrAbortHandler) // the client sees the answer broke, as it did
	}
	if m.ended() {
		// Only the end was lost: the client has every token.
		if !m.done && m.api != apiResponses {
			p.writeEvent(rp, sseEvent("", []byte("[DONE]")))
		}
		if rp.report != nil {
			p.migrated(rp)
		}
		return nil, false
	}
	if m.why == "" && m.left == 0 {
		m.stop(fmt.Sprintf("it was continued %d times already (--migration-limit)", p.cfg.MigrationLimit))
	}
	if m.why == "" {
		if body, err := m.continuation(); err != nil {
			m.stop(err.Error())
		} else {
			m.left--
			m.beginContinuation()
			rp.tap.restart()
			if rp.report == nil {
				rp.report = &pendingMigration{since: time.Now(), Migration: wsapi.Migration{At: time.Now().UTC(), Model: g.Model, From: from,
					Tokens: m.tokens, Reason: TruncateText(rp.broke, 900)}}
			}
			// A continuation that broke off before its first text
			// keeps the migration in progress: its pause goes on.
			return body, true
		}
	}
	if rp.report != nil {
		// A continuation was sent, and refused or broken off: the
		// client has had part of the answer, and now an error.
		p.migrationFailed(rp, m.why)
		p.streamError(rp, "the worker serving this stream failed and it could not be continued: "+m.why)
		return nil, false
	}
	p.metrics.migrations.WithLabelValues(g.Model, "not_migratable").Inc()
	p.log.Warn("stream broke off and is not migrated", "model", g.Model, "from", from, "tokens", m.tokens, "broke", rp.broke, "why", m.why)
	p.report(wsapi.Migration{At: time.Now().UTC(), Model: g.Model, From: from, Tokens: m.tokens, Result: wsapi.MigrationFailed,
		Reason: TruncateText(m.why, 900)})
	if m.broke != nil {
		// The worker's own error ends the stream, as it did without
		// migration.
		p.writeEvent(rp, m.broke)
		return nil, false
	}
	panic(http.ErrAbortHandler)
}

// streamError ends a stream under way with an error event: the OpenAI
// error object as a data event (which the openai and Vercel AI SDKs raise),
// or a Responses stream's error event.
func (p *Proxy) streamError(rp *reply, msg string) {
	if rp.mig != nil && rp.mig.api == apiResponses {
		b, _ := jsonv2.Marshal(map[string]any{"type": "error", "code": "stream_broken", "message": msg, "param": nil,
			"sequence_number": rp.mig.seq + 1}, jsonv2.Deterministic(true))
		p.writeEvent(rp, sseEvent("error", b))
		return
	}
	b, _ := jsonv2.Marshal(ErrorBody(http.StatusBadGateway, "stream_broken", msg), jsonv2.Deterministic(true))
	p.writeEvent(rp, sseEvent("", b))
}

// migrated completes a migration once its continuation's first text
// reached the client.
func (p *Proxy) migrated(rp *reply) {
	mr := rp.report
	rp.report = nil
	rp.migrated++
	mr.PauseMS = time.Since(mr.since).Milliseconds()
	mr.Result = wsapi.MigrationContinued
	p.metrics.migrations.WithLabelValues(mr.Model, wsapi.MigrationContinued).Inc()
	p.log.Info("stream migrated", "model", mr.Model, "from", mr.From, "to", mr.To, "tokens", mr.Tokens,
		"pause", time.Duration(mr.PauseMS)*time.Millisecond, "broke", mr.Reason)
	p.report(mr.Migration)
}

// migrationFailed ends a migration in progress whose continuation never
// reached the client: the client gets an error event.
func (p *Proxy) migrationFailed(rp *reply, why string) {
	mr := rp.report
	if mr == nil {
		return
	}
	rp.report = nil
	mr.Result, mr.Reason = wsapi.MigrationFailed, TruncateText(why+"; "+mr.Reason, 900)
	p.metrics.migrations.WithLabelValues(mr.Model, wsapi.MigrationFailed).Inc()
	p.log.Warn("stream broke off and could not be continued", "model", mr.Model, "from", mr.From, "tokens", mr.Tokens, "why", mr.Reason)
	p.report(mr.Migration)
}

// report hands a migration to whoever lists them.
func (p *Proxy) report(m wsapi.Migration) {
	m.Type, m.Entry = wsapi.TypeMigration, p.cfg.Name
	if p.cfg.OnMigration != nil {
		p.cfg.OnMigration(m)
	}
}

// writeEvent sends the client one more event of its stream.
func (p *Proxy) writeEvent(rp *reply, ev []byte) {
	if _, err := rp.w.Write(ev); err == nil {
		_ = http.NewResponseController(rp.w).Flush()
	}
}
