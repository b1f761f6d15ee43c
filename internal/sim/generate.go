package sim

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
)

// words are what the simulator says, over and over: readable, and easy for
// a test to predict (see Text).
var words = strings.Fields("The quick brown fox jumps over the lazy dog.")

// Token returns the i-th generated token (from 0): a word, with a leading
// space after the first.
func Token(i int) string {
	switch {
	case i < 0:
		return ""
	case i == 0:
		return words[0]
	default:
		return " " + words[i%len(words)]
	}
}

// Text returns what a simulator generates for n tokens: "The quick brown
// fox jumps over the lazy dog. The quick...".
func Text(n int) string {
	var sb strings.Builder
	for i := range n {
		sb.WriteString(Token(i))
	}
	return sb.String()
}

// cycle is what the answer repeats, byte for byte: Token(9) is " The", so
// Text(n) is a prefix of cycle, cycle, cycle...
var cycle = strings.Join(words, " ") + " "

// answerPrefix reports whether s is a prefix of Text(m) for some m.
func answerPrefix(s string) bool {
	for i := range len(s) {
		if s[i] != cycle[i%len(cycle)] {
			return false
		}
	}
	return true
}

// Continues reports whether prefix is the start of the simulator's answer
// (a prefix of Text(m) for some m, which may end inside a token), and where
// the answer goes on from it: in token k, of which rest is still to come
// (all of Token(k) when prefix ends between tokens). A simulator asked to
// continue prefix with n new tokens says rest, Token(k+1), ...,
// Token(k+n-1), so that prefix and its continuation are an uninterrupted
// answer; that is what a request migrated off a dead worker must see.
func Continues(prefix string) (k int, rest string, ok bool) {
	if !answerPrefix(prefix) {
		return 0, "", false
	}
	// Token(9c) is " The", a byte before the c-th cycle: start there, so
	// that a long prefix costs a few steps, not one a token.
	b, start := len(prefix), 0
	if c := b / len(cycle); c > 0 {
		k, start = c*len(words), c*len(cycle)-1
	}
	for start+len(Token(k)) <= b {
		start += len(Token(k))
		k++
	}
	return k, Token(k)[b-start:], true
}

// answerSuffix returns the longest suffix of s that is a non-empty prefix of
// the answer, or "": where a completion's prompt holds an answer cut short.
func answerSuffix(s string) string {
	best := len(s)
	// The answer is cycle repeated, so s matches it from some start to its
	// end in one alignment (phase) of cycle only; the others fail within a
	// cycle's length of the end, as cycle equals none of its rotations.
	for phase := range len(cycle) {
		for i := len(s) - 1; i >= 0 && s[i] == cycle[(i+phase)%len(cycle)]; i-- {
			if (i+phase)%len(cycle) == 0 {
				best = min(best, i)
			}
		}
	}
	return s[best:]
}

// continuation is where a request's answer resumes: in Token(k), of which
// rest is still to come (see Continues).
type continuation struct {
	k    int
	rest string
	// base is the prompt before the assistant message that holds prefix,
	// the answer so far (chat, responses): the conversation's next turn
	// holds prefix and its continuation as one message.
	base   promptHash
	prefix string
}

// token returns the request's i-th new token: Token(i), or the i-th after
// the point its continuation resumes at.
func (g *genRequest) token(i int) string {
	k := i
	if c := g.Cont; c != nil {
		if i == 0 {
			return c.rest
		}
		k += c.k
	}
	switch {
	case g.Fixed == nil:
		return Token(k)
	case k < len(g.Fixed):
		return g.Fixed[k]
	default:
		return ""
	}
}

// text returns the request's first n new tokens.
func (g *genRequest) text(n int) string {
	if g.Cont == nil && g.Fixed == nil {
		return Text(n)
	}
	var sb strings.Builder
	for i := range n {
		sb.WriteString(g.token(i))
	}
	return sb.String()
}

// budget returns how many tokens to generate and why generation then stops:
// "length" when the request's own limit ends it, "stop" when the answer
// ends by itself (the configured length, or the cap). A continuation's
// limit counts its new tokens, as an engine's does; without one it stops
// where the uninterrupted answer would have, so that a migrated answer
// ends as one that was never cut. A document or a call (Fixed) ends with
// its last token, or is cut ("length") by the request's limit or the cap.
func (s *Simulator) budget(g genRequest) (int, string) {
	if g.Fixed != nil {
		left := len(g.Fixed)
		if g.Cont != nil {
			left -= g.Cont.k
		}
		lim := MaxTokensCap
		if g.MaxTokens > 0 {
			lim = min(lim, g.MaxTokens)
		}
		if left > lim {
			return lim, "length"
		}
		return left, "stop"
	}
	switch {
	case g.MaxTokens == 0 && g.Cont != nil:
		return max(s.cfg.MaxTokens-g.Cont.k, 0), "stop"
	case g.MaxTokens == 0:
		return s.cfg.MaxTokens, "stop"
	case g.MaxTokens > MaxTokensCap:
		return MaxTokensCap, "stop"
	default:
		return g.MaxTokens, "length"
	}
}

// pacer releases tokens on time: token i is due ttft + i/TokensPerSecond
// after the slot was taken, wherever the previous one was late, on one timer
// per request.
type pacer struct {
	s     *Simulator
	r     *http.Request
	c     *call
	start time.Time
	ttft  time.Duration
	timer *time.Timer
}

func (s *Simulator) newPacer(r *http.Request, c *call, ttft time.Duration) *pacer {
	return &pacer{s: s, r: r, c: c, start: time.Now(), ttft: ttft}
}

// wait blocks until token i is due. It returns served when it is, cancelled
// when the client went away, aborted on AbortAll.
func (p *pacer) wait(i int) outcome {
	d := time.Until(p.start.Add(p.ttft + time.Duration(i)*p.s.interval))
	if d <= 0 {
		select {
		case <-p.r.Context().Done():
			return cancelled
		case <-p.c.abort:
			return aborted
		default:
			return served
		}
	}
	if p.timer == nil {
		p.timer = time.NewTimer(d)
	} else {
		p.timer.Reset(d)
	}
	select {
	case <-p.timer.C:
		return served
	case <-p.r.Context().Done():
		p.timer.Stop()
		return cancelled
	case <-p.c.abort:
		p.timer.Stop()
		return aborted
	}
}

// usage is OpenAI's token accounting.
type usage struct {
	PromptTokens        int                  `json:"prompt_tokens"`
	CompletionTokens    int                  `json:"completion_tokens"`
	TotalTokens         int                  `json:"total_tokens"`
	PromptTokensDetails *promptTokensDetails `json:"prompt_tokens_details,omitempty"`
}

// promptTokensDetails says how much of a prompt the prefix cache held, as
// OpenAI and llama-server report it.
type promptTokensDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

// newUsage is the usage of a request with prompt tokens, cached of them in
// the prefix cache, and completion tokens; the details only when
// Config.PrefixCache is on, so that without it answers are as before.
func (s *Simulator) newUsage(prompt, cached, completion int) *usage {
	u := &usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
	if s.prefix != nil {
		u.PromptTokensDetails = &promptTokensDetails{CachedTokens: cached}
	}
	return u
}

// systemFingerprint names the backend, as OpenAI's responses do.
const systemFingerprint = "rbee-simulator"

type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []chatChoice `json:"choices"`
	Usage             *usage       `json:"usage,omitempty"`
}

type chatChoice struct {
	Index int `json:"index"`
	// Message and Delta are a *chatContent, or a *callMessage for a call.
	Message      any       `json:"message,omitempty"`
	Delta        any       `json:"delta,omitempty"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

type chatContent struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// callMessage is an assistant message that calls a function, as a whole
// answer's message or a stream's first delta: its content is null.
type callMessage struct {
	Role      string     `json:"role"`
	Content   *string    `json:"content"`
	Refusal   *string    `json:"refusal"`
	ToolCalls []toolCall `json:"tool_calls"`
}

// callDelta is a stream's later delta of a call: a piece of its arguments.
type callDelta struct {
	ToolCalls []toolCall `json:"tool_calls"`
}

type toolCall struct {
	Index    *int         `json:"index,omitempty"` // in a stream's deltas
	ID       string       `json:"id,omitempty"`
	Type     string       `json:"type,omitempty"`
	Function callFunction `json:"function"`
}

type callFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

type textCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []textChoice `json:"choices"`
	Usage             *usage       `json:"usage,omitempty"`
}

type textChoice struct {
	Text         string    `json:"text"`
	Index        int       `json:"index"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

// usageChunk is the last event of a stream that asked for usage: no
// choices, the whole request's usage.
type usageChunk struct {
	ID                string     `json:"id"`
	Object            string     `json:"object"`
	Created           int64      `json:"created"`
	Model             string     `json:"model"`
	SystemFingerprint string     `json:"system_fingerprint"`
	Choices           []struct{} `json:"choices"`
	Usage             *usage     `json:"usage"`
}

// answer builds the JSON of one chat completion or completion; the two
// differ only in shape.
type answer struct {
	chat    bool // chat completion, else completion
	id      string
	created int64
	model   string
}

func (a *answer) object(chunk bool) string {
	switch {
	case !a.chat:
		return "text_completion"
	case chunk:
		return "chat.completion.chunk"
	default:
		return "chat.completion"
	}
}

// opening is a stream's first event, or nil: a chat stream first names the
// assistant's role; a completion stream starts with text.
func (a *answer) opening() any {
	if !a.chat {
		return nil
	}
	return a.chunk(&chatContent{Role: "assistant", Content: new(string)}, "", nil)
}

// token is a stream event carrying one token.
func (a *answer) token(t string) any {
	return a.chunk(&chatContent{Content: &t}, t, nil)
}

// closing is a stream's last choice event: no text, the finish reason.
func (a *answer) closing(finish string) any {
	return a.chunk(&chatContent{}, "", &finish)
}

// callOpening is a call's stream's first event: the role, and the call's
// id and function with no arguments yet.
func (a *answer) callOpening(id, name string) any {
	zero := 0
	return a.chunk(&callMessage{Role: "assistant", ToolCalls: []toolCall{
		{Index: &zero, ID: id, Type: "function", Function: callFunction{Name: name}}}}, "", nil)
}

// callToken is a stream event carrying a piece of a call's arguments.
func (a *answer) callToken(t string) any {
	zero := 0
	return a.chunk(&callDelta{ToolCalls: []toolCall{{Index: &zero, Function: callFunction{Arguments: t}}}}, "", nil)
}

// called is the non-streaming answer that calls a function.
func (a *answer) called(id, name, args, finish string, u *usage) any {
	return chatCompletion{ID: a.id, Object: a.object(false), Created: a.created, Model: a.model,
		SystemFingerprint: systemFingerprint, Usage: u,
		Choices: []chatChoice{{Message: &callMessage{Role: "assistant", ToolCalls: []toolCall{
			{ID: id, Type: "function", Function: callFunction{Name: name, Arguments: args}}}}, FinishReason: &finish}}}
}

func (a *answer) chunk(delta any, text string, finish *string) any {
	if a.chat {
		return chatCompletion{ID: a.id, Object: a.object(true), Created: a.created, Model: a.model,
			SystemFingerprint: systemFingerprint, Choices: []chatChoice{{Delta: delta, FinishReason: finish}}}
	}
	return textCompletion{ID: a.id, Object: a.object(true), Created: a.created, Model: a.model,
		SystemFingerprint: systemFingerprint, Choices: []textChoice{{Text: text, FinishReason: finish}}}
}

// usage is the extra last event of a stream with include_usage.
func (a *answer) usage(u *usage) any {
	return usageChunk{ID: a.id, Object: a.object(true), Created: a.created, Model: a.model,
		SystemFingerprint: systemFingerprint, Choices: []struct{}{}, Usage: u}
}

// whole is the non-streaming answer.
func (a *answer) whole(text, finish string, u *usage) any {
	if a.chat {
		return chatCompletion{ID: a.id, Object: a.object(false), Created: a.created, Model: a.model,
			SystemFingerprint: systemFingerprint, Usage: u,
			Choices: []chatChoice{{Message: &chatContent{Role: "assistant", Content: &text}, FinishReason: &finish}}}
	}
	return textCompletion{ID: a.id, Object: a.object(false), Created: a.created, Model: a.model,
		SystemFingerprint: systemFingerprint, Usage: u,
		Choices: []textChoice{{Text: text, FinishReason: &finish}}}
}

func (s *Simulator) handleChat(w http.ResponseWriter, r *http.Request, c *call) outcome {
	return s.generate(w, r, c, true)
}

func (s *Simulator) handleCompletion(w http.ResponseWriter, r *http.Request, c *call) outcome {
	return s.generate(w, r, c, false)
}

// generate answers a chat completion or a completion: decode, wait for a
// slot, then generate paced tokens, streamed or whole.
func (s *Simulator) generate(w http.ResponseWriter, r *http.Request, c *call, chat bool) outcome {
	body, err := readBody(w, r)
	if err != nil {
		return reject(w, err)
	}
	decode, prefix := decodeCompletion, "cmpl"
	if chat {
		decode, prefix = decodeChat, "chatcmpl"
	}
	g, err := decode(body)
	if err != nil {
		return reject(w, err)
	}
	if o := s.acquire(r, c); o != served {
		return o
	}
	defer s.release()

	a := &answer{chat: chat, id: s.nextID(prefix), created: time.Now().Unix(), model: g.Model}
	if a.model == "" {
		a.model = s.cfg.Model
	}
	n, finish := s.budget(g)
	cached, ttft := s.prefill(&g)
	u := s.newUsage(g.PromptTokens, cached, n)
	p := s.newPacer(r, c, ttft)
	var callID string
	if g.Call != "" {
		callID = "call_" + strings.TrimPrefix(a.id, prefix+"-")
		if finish == "stop" {
			finish = "tool_calls"
		}
	}
	if !g.Stream {
		if o := p.wait(n - 1); o != served {
			return o
		}
		if g.Call != "" {
			writeJSON(w, http.StatusOK, a.called(callID, g.Call, g.text(n), finish, u))
		} else {
			writeJSON(w, http.StatusOK, a.whole(g.text(n), finish, u))
		}
		return s.answered(&g, cached, n)
	}

	st := newStream(w)
	ev, token := a.opening(), a.token
	if g.Call != "" {
		ev, token = a.callOpening(callID, g.Call), a.callToken
	}
	if ev != nil {
		if err := st.event(ev); err != nil {
			return cancelled
		}
	}
	for i := range n {
		if o := p.wait(i); o != served {
			return o
		}
		if err := st.event(token(g.token(i))); err != nil {
			return cancelled
		}
	}
	if err := st.event(a.closing(finish)); err != nil {
		return cancelled
	}
	if g.IncludeUsage {
		if err := st.event(a.usage(u)); err != nil {
			return cancelled
		}
	}
	if err := st.done(); err != nil {
		return cancelled
	}
	return s.answered(&g, cached, n)
}

// stream writes server-sent events, each flushed as it is written.
type stream struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

func newStream(w http.ResponseWriter) *stream {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: pass events through
	w.WriteHeader(http.StatusOK)
	return &stream{w: w, rc: http.NewResponseController(w)}
}

func (st *stream) event(v any) error { return st.named("", v) }

// named writes v as an event with an `event:` line naming it, as the
// Responses API's streams have; "" writes only the data, as chat
// completions' do.
func (st *stream) named(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return st.write(name, b)
}

func (st *stream) done() error { return st.write("", []byte("[DONE]")) }

func (st *stream) write(name string, data []byte) error {
	st.buf = st.buf[:0]
	if name != "" {
		st.buf = append(append(append(st.buf, "event: "...), name...), '\n')
	}
	st.buf = append(append(append(st.buf, "data: "...), data...), "\n\n"...)
	if _, err := st.w.Write(st.buf); err != nil {
		return err
	}
	if err := st.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}
