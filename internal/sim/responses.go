package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Responses API (POST /v1/responses), as OpenAI serves it and the Vercel
// AI SDK's default provider calls it: a response object, or with "stream":
// true its events, each with an `event:` line naming it. The simulator keeps
// no conversation: a previous_response_id is accepted when this simulator
// made that response (and refused with OpenAI's 404 otherwise), which is
// what shows that a router sent a follow-up to the right worker.

// responsesRequest is what the simulator needs from a Responses request.
type responsesRequest struct {
	genRequest
	Instructions       *string
	MaxOutputTokens    *int
	PreviousResponseID *string
	// Tools, ToolChoice and Format are the request's, echoed in the
	// response object as OpenAI does.
	Tools, ToolChoice, Format json.RawMessage
}

type responsesBody struct {
	Model              *string         `json:"model"`
	Stream             *bool           `json:"stream"`
	Input              json.RawMessage `json:"input"`
	Instructions       *string         `json:"instructions"`
	MaxOutputTokens    *int            `json:"max_output_tokens"`
	PreviousResponseID *string         `json:"previous_response_id"`
	Tools              json.RawMessage `json:"tools"`
	ToolChoice         json.RawMessage `json:"tool_choice"`
	Text               *struct {
		Format json.RawMessage `json:"format"`
	} `json:"text"`
}

// decodeResponses reads a Responses request: input is a string or a list
// of items (messages with a role, whose content is a string or content
// parts; or other items, such as function call outputs, with a type).
func decodeResponses(body []byte) (responsesRequest, error) {
	var b responsesBody
	if err := decodeObject(body, &b); err != nil {
		return responsesRequest{}, err
	}
	r := responsesRequest{Instructions: b.Instructions, MaxOutputTokens: b.MaxOutputTokens, PreviousResponseID: b.PreviousResponseID}
	if b.Model != nil {
		r.Model = *b.Model
	}
	if b.Stream != nil {
		r.Stream = *b.Stream
	}
	if b.MaxOutputTokens != nil {
		if *b.MaxOutputTokens < 1 {
			return responsesRequest{}, errors.New("max_output_tokens must be at least 1")
		}
		r.MaxTokens = *b.MaxOutputTokens
	}
	var sh shape
	var err error
	if sh.funcs, err = decodeTools(b.Tools, true); err != nil {
		return responsesRequest{}, err
	}
	if err := sh.decodeToolChoice(b.ToolChoice); err != nil {
		return responsesRequest{}, err
	}
	if b.Text != nil {
		if err := sh.decodeFormat(b.Text.Format, true); err != nil {
			return responsesRequest{}, err
		}
		r.Format = b.Text.Format
	}
	r.Tools, r.ToolChoice = b.Tools, b.ToolChoice
	var t tail
	if b.Instructions != nil {
		r.Prompt.text(*b.Instructions)
		t.conv.add("instructions", *b.Instructions)
	}
	if len(sh.funcs) > 0 {
		r.Prompt.text(string(b.Tools))
	}
	t, err = inputTokens(&r.Prompt, t, b.Input)
	if err != nil {
		return responsesRequest{}, err
	}
	if t.assistant {
		r.Cont = continuationOf(t.base, t.text)
	}
	r.PromptTokens, r.Messages = r.Prompt.n, true
	if err := sh.apply(&r.genRequest, t); err != nil {
		return responsesRequest{}, err
	}
	return r, nil
}

// inputTokens adds the tokens of a Responses request's input to p and its
// messages to t's hashes, and returns how it ends: with a function call's
// output (a tool's result), or an assistant message that the answer may
// continue.
func inputTokens(p *promptHash, t tail, raw json.RawMessage) (tail, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return t, errors.New(`"input" is required`)
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return t, errors.New("input: not a valid string")
		}
		p.text(s)
		t.conv.add("user", s)
		return t, nil
	}
	var items []struct {
		Type    *string         `json:"type"`
		Role    *string         `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return t, errors.New("input: want a string or an array of input items")
	}
	switch {
	case len(items) == 0:
		return t, errors.New("input must not be empty")
	case len(items) > maxInputs:
		return t, fmt.Errorf("input: %d items, at most %d", len(items), maxInputs)
	}
	var itemsRaw []json.RawMessage
	_ = json.Unmarshal(raw, &itemsRaw) // the same array, just decoded
	last := len(items) - 1
	for i, it := range items {
		if it.Role == nil {
			if it.Type == nil || *it.Type == "" || *it.Type == "message" {
				return tail{}, fmt.Errorf("input[%d]: a message needs a role; another item a type", i)
			}
			t.tool = i == last && *it.Type == "function_call_output"
			p.text(string(itemsRaw[i]))
			var compact bytes.Buffer
			_ = json.Compact(&compact, itemsRaw[i]) // valid: it decoded
			t.conv.add(*it.Type, compact.String())
			continue
		}
		if *it.Role == "" {
			return tail{}, fmt.Errorf("input[%d].role must not be empty", i)
		}
		text, err := messageText(it.Content)
		if err != nil {
			return tail{}, fmt.Errorf("input[%d].content: %w", i, err)
		}
		if i == last && *it.Role == "assistant" && outputTextOnly(it.Content) {
			t.assistant, t.base, t.text, t.baseConv = true, *p, text, t.conv
		}
		p.message(*it.Role, text)
		t.conv.add(*it.Role, text)
	}
	return t, nil
}

// outputTextOnly reports whether a message's content is a string or text
// parts only: an answer the simulator could have written and can go on
// with, not a refusal or anything else.
func outputTextOnly(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return true
	}
	var parts []struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return false
	}
	for _, p := range parts {
		if p.Type != "output_text" && p.Type != "input_text" {
			return false
		}
	}
	return true
}

// responseObject is OpenAI's response object.
type responseObject struct {
	ID                 string             `json:"id"`
	Object             string             `json:"object"`
	CreatedAt          int64              `json:"created_at"`
	Status             string             `json:"status"`
	Error              *struct{}          `json:"error"`
	IncompleteDetails  *incompleteDetails `json:"incomplete_details"`
	Instructions       *string            `json:"instructions"`
	MaxOutputTokens    *int               `json:"max_output_tokens"`
	Model              string             `json:"model"`
	Output             []any              `json:"output"` // outputItem, functionCallItem
	ParallelToolCalls  bool               `json:"parallel_tool_calls"`
	PreviousResponseID *string            `json:"previous_response_id"`
	Reasoning          reasoning          `json:"reasoning"`
	Store              bool               `json:"store"`
	Temperature        float64            `json:"temperature"`
	Text               textConfig         `json:"text"`
	ToolChoice         json.RawMessage    `json:"tool_choice"`
	Tools              json.RawMessage    `json:"tools"`
	TopP               float64            `json:"top_p"`
	Truncation         string             `json:"truncation"`
	Usage              *responsesUsage    `json:"usage"`
	User               *string            `json:"user"`
	Metadata           map[string]string  `json:"metadata"`
}

type incompleteDetails struct {
	Reason string `json:"reason"`
}

type reasoning struct {
	Effort  *string `json:"effort"`
	Summary *string `json:"summary"`
}

type textConfig struct {
	Format json.RawMessage `json:"format"`
}

// outputItem is a message in a response's output.
type outputItem struct {
	ID      string       `json:"id"`
	Type    string       `json:"type"`
	Status  string       `json:"status"`
	Role    string       `json:"role"`
	Content []outputText `json:"content"`
}

// functionCallItem is a function call in a response's output.
type functionCallItem struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Status    string `json:"status"`
	Arguments string `json:"arguments"`
	CallID    string `json:"call_id"`
	Name      string `json:"name"`
}

type outputText struct {
	Type        string     `json:"type"`
	Text        string     `json:"text"`
	Annotations []struct{} `json:"annotations"`
	Logprobs    []struct{} `json:"logprobs"`
}

type responsesUsage struct {
	InputTokens        int `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int `json:"total_tokens"`
}

// responseEvent is one event of a streamed response; which fields it has
// depends on its type.
type responseEvent struct {
	Type           string          `json:"type"`
	SequenceNumber int             `json:"sequence_number"`
	Response       *responseObject `json:"response,omitempty"`
	OutputIndex    *int            `json:"output_index,omitempty"`
	ItemID         string          `json:"item_id,omitempty"`
	ContentIndex   *int            `json:"content_index,omitempty"`
	Item           any             `json:"item,omitempty"` // *outputItem, *functionCallItem
	Part           *outputText     `json:"part,omitempty"`
	Delta          *string         `json:"delta,omitempty"`
	Text           *string         `json:"text,omitempty"`
	Name           string          `json:"name,omitempty"`
	Arguments      *string         `json:"arguments,omitempty"`
	Logprobs       *[]struct{}     `json:"logprobs,omitempty"`
}

// responseIDs makes and recognises this simulator's response ids:
// resp_<simulator><sequence>, all hex, like OpenAI's.
func (s *Simulator) responseID(n uint64) string {
	return fmt.Sprintf("resp_%s%016x", s.idPrefix, n)
}

// madeResponse reports whether id is a response this simulator made.
func (s *Simulator) madeResponse(id string) bool {
	rest, ok := strings.CutPrefix(id, "resp_"+s.idPrefix)
	if !ok || len(rest) != 16 {
		return false
	}
	n, err := strconv.ParseUint(rest, 16, 64)
	return err == nil && n >= 1 && n <= s.ids.Load()
}

// handleResponses answers POST /v1/responses: decode, wait for a slot, then
// generate paced tokens, as a response object or its events.
func (s *Simulator) handleResponses(w http.ResponseWriter, r *http.Request, c *call) outcome {
	body, err := readBody(w, r)
	if err != nil {
		return reject(w, err)
	}
	req, err := decodeResponses(body)
	if err != nil {
		return reject(w, err)
	}
	if p := req.PreviousResponseID; p != nil && *p != "" && !s.madeResponse(*p) {
		writeJSON(w, http.StatusNotFound, apiError{Error: apiErrorBody{
			Message: fmt.Sprintf("Previous response with id '%s' not found.", truncate(*p, 100)),
			Type:    "invalid_request_error", Param: ptr("previous_response_id"), Code: ptr("previous_response_not_found")}})
		return rejected
	}
	if o := s.acquire(r, c); o != served {
		return o
	}
	defer s.release()

	n, finish := s.budget(req.genRequest)
	cached, ttft := s.prefill(&req.genRequest)
	seq := s.ids.Add(1)
	resp := &responseObject{
		ID: s.responseID(seq), Object: "response", CreatedAt: time.Now().Unix(), Status: "in_progress",
		Instructions: req.Instructions, MaxOutputTokens: req.MaxOutputTokens, Model: req.Model, Output: []any{},
		ParallelToolCalls: true, PreviousResponseID: req.PreviousResponseID, Store: true, Temperature: 1,
		ToolChoice: orJSON(req.ToolChoice, `"auto"`), Tools: orJSON(req.Tools, `[]`), TopP: 1, Truncation: "disabled",
		Metadata: map[string]string{}, Text: textConfig{Format: orJSON(req.Format, `{"type":"text"}`)},
	}
	if resp.Model == "" {
		resp.Model = s.cfg.Model
	}
	// finished completes resp with its one output item: "length" is
	// OpenAI's incomplete response (max_output_tokens reached).
	finished := func(item any) *responseObject {
		done := *resp
		done.Status = "completed"
		if finish == "length" {
			done.Status = "incomplete"
			done.IncompleteDetails = &incompleteDetails{Reason: "max_output_tokens"}
		}
		done.Output = []any{item}
		u := &responsesUsage{InputTokens: req.PromptTokens, OutputTokens: n, TotalTokens: req.PromptTokens + n}
		u.InputTokensDetails.CachedTokens = cached
		done.Usage = u
		return &done
	}
	itemStatus := "completed"
	if finish == "length" {
		itemStatus = "incomplete"
	}
	p := s.newPacer(r, c, ttft)
	var st *stream
	var ev *eventSeq
	zero := 0
	// send sends events in turn, stopping at the first that fails.
	send := func(es ...responseEvent) error {
		for _, e := range es {
			if err := ev.send(e); err != nil {
				return err
			}
		}
		return nil
	}
	if req.Stream {
		st = newStream(w)
		ev = &eventSeq{st: st}
		if send(responseEvent{Type: "response.created", Response: resp}, responseEvent{Type: "response.in_progress", Response: resp}) != nil {
			return cancelled
		}
	}
	lastEvent := func(done *responseObject) responseEvent {
		if done.Status == "incomplete" {
			return responseEvent{Type: "response.incomplete", Response: done}
		}
		return responseEvent{Type: "response.completed", Response: done}
	}

	if req.Call != "" {
		item := functionCallItem{ID: fmt.Sprintf("fc_%s%016x", s.idPrefix, seq), Type: "function_call", Status: "in_progress",
			CallID: fmt.Sprintf("call_%s%016x", s.idPrefix, seq), Name: req.Call}
		if !req.Stream {
			if o := p.wait(n - 1); o != served {
				return o
			}
			item.Status, item.Arguments = itemStatus, req.text(n)
			writeJSON(w, http.StatusOK, finished(item))
			return s.answered(&req.genRequest, cached, n)
		}
		if send(responseEvent{Type: "response.output_item.added", OutputIndex: &zero, Item: &item}) != nil {
			return cancelled
		}
		for i := range n {
			if o := p.wait(i); o != served {
				return o
			}
			tok := req.token(i)
			if send(responseEvent{Type: "response.function_call_arguments.delta", ItemID: item.ID, OutputIndex: &zero, Delta: &tok}) != nil {
				return cancelled
			}
		}
		args := req.text(n)
		doneItem := item
		doneItem.Status, doneItem.Arguments = itemStatus, args
		done := finished(doneItem)
		if send(responseEvent{Type: "response.function_call_arguments.done", ItemID: item.ID, OutputIndex: &zero, Name: req.Call, Arguments: &args},
			responseEvent{Type: "response.output_item.done", OutputIndex: &zero, Item: &doneItem},
			lastEvent(done)) != nil {
			return cancelled
		}
		return s.answered(&req.genRequest, cached, n)
	}

	item := outputItem{ID: fmt.Sprintf("msg_%s%016x", s.idPrefix, seq), Type: "message", Status: "in_progress", Role: "assistant", Content: []outputText{}}
	message := func(text string) outputItem {
		it := item
		it.Status = itemStatus
		it.Content = []outputText{{Type: "output_text", Text: text, Annotations: []struct{}{}, Logprobs: []struct{}{}}}
		return it
	}
	if !req.Stream {
		if o := p.wait(n - 1); o != served {
			return o
		}
		writeJSON(w, http.StatusOK, finished(message(req.text(n))))
		return s.answered(&req.genRequest, cached, n)
	}

	emptyPart := outputText{Type: "output_text", Annotations: []struct{}{}, Logprobs: []struct{}{}}
	noLogprobs := &[]struct{}{}
	if send(responseEvent{Type: "response.output_item.added", OutputIndex: &zero, Item: &item},
		responseEvent{Type: "response.content_part.added", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero, Part: &emptyPart}) != nil {
		return cancelled
	}
	for i := range n {
		if o := p.wait(i); o != served {
			return o
		}
		tok := req.token(i)
		if send(responseEvent{Type: "response.output_text.delta", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero,
			Delta: &tok, Logprobs: noLogprobs}) != nil {
			return cancelled
		}
	}
	text := req.text(n)
	doneItem := message(text)
	if send(responseEvent{Type: "response.output_text.done", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero, Text: &text, Logprobs: noLogprobs},
		responseEvent{Type: "response.content_part.done", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero, Part: &doneItem.Content[0]},
		responseEvent{Type: "response.output_item.done", OutputIndex: &zero, Item: &doneItem},
		lastEvent(finished(doneItem))) != nil {
		return cancelled
	}
	return s.answered(&req.genRequest, cached, n)
}

// orJSON returns raw, or def when raw is empty or null.
func orJSON(raw json.RawMessage, def string) json.RawMessage {
	if t := bytes.TrimSpace(raw); len(t) > 0 && string(t) != "null" {
		return raw
	}
	return json.RawMessage(def)
}

// eventSeq numbers a response's events and sends each under its type's
// name.
type eventSeq struct {
	st  *stream
	seq int
}

func (e *eventSeq) send(ev responseEvent) error {
	ev.SequenceNumber = e.seq
	e.seq++
	return e.st.named(ev.Type, ev)
}

func ptr[T any](v T) *T { return &v }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
