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
}

type responsesBody struct {
	Model              *string         `json:"model"`
	Stream             *bool           `json:"stream"`
	Input              json.RawMessage `json:"input"`
	Instructions       *string         `json:"instructions"`
	MaxOutputTokens    *int            `json:"max_output_tokens"`
	PreviousResponseID *string         `json:"previous_response_id"`
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
	if b.Instructions != nil {
		r.Prompt.text(*b.Instructions)
	}
	cont, err := inputTokens(&r.Prompt, b.Input)
	if err != nil {
		return responsesRequest{}, err
	}
	r.Cont = cont
	r.PromptTokens, r.Messages = r.Prompt.n, true
	return r, nil
}

// inputTokens adds the tokens of a Responses request's input to p, and
// returns the continuation of the answer its last item, an assistant
// message, starts (nil if none).
func inputTokens(p *promptHash, raw json.RawMessage) (*continuation, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errors.New(`"input" is required`)
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, errors.New("input: not a valid string")
		}
		p.text(s)
		return nil, nil
	}
	var items []struct {
		Type    *string         `json:"type"`
		Role    *string         `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, errors.New("input: want a string or an array of input items")
	}
	switch {
	case len(items) == 0:
		return nil, errors.New("input must not be empty")
	case len(items) > maxInputs:
		return nil, fmt.Errorf("input: %d items, at most %d", len(items), maxInputs)
	}
	var cont *continuation
	var itemsRaw []json.RawMessage
	_ = json.Unmarshal(raw, &itemsRaw) // the same array, just decoded
	for i, it := range items {
		if it.Role == nil {
			if it.Type == nil || *it.Type == "" || *it.Type == "message" {
				return nil, fmt.Errorf("input[%d]: a message needs a role; another item a type", i)
			}
			p.text(string(itemsRaw[i]))
			continue
		}
		if *it.Role == "" {
			return nil, fmt.Errorf("input[%d].role must not be empty", i)
		}
		text, err := messageText(it.Content)
		if err != nil {
			return nil, fmt.Errorf("input[%d].content: %w", i, err)
		}
		if i == len(items)-1 && *it.Role == "assistant" && outputTextOnly(it.Content) {
			cont = continuationOf(*p, text)
		}
		p.message(*it.Role, text)
	}
	return cont, nil
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
	Output             []outputItem       `json:"output"`
	ParallelToolCalls  bool               `json:"parallel_tool_calls"`
	PreviousResponseID *string            `json:"previous_response_id"`
	Reasoning          reasoning          `json:"reasoning"`
	Store              bool               `json:"store"`
	Temperature        float64            `json:"temperature"`
	Text               textConfig         `json:"text"`
	ToolChoice         string             `json:"tool_choice"`
	Tools              []struct{}         `json:"tools"`
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
	Format struct {
		Type string `json:"type"`
	} `json:"format"`
}

// outputItem is a message in a response's output.
type outputItem struct {
	ID      string       `json:"id"`
	Type    string       `json:"type"`
	Status  string       `json:"status"`
	Role    string       `json:"role"`
	Content []outputText `json:"content"`
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
	Item           *outputItem     `json:"item,omitempty"`
	Part           *outputText     `json:"part,omitempty"`
	Delta          *string         `json:"delta,omitempty"`
	Text           *string         `json:"text,omitempty"`
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
		Instructions: req.Instructions, MaxOutputTokens: req.MaxOutputTokens, Model: req.Model, Output: []outputItem{},
		ParallelToolCalls: true, PreviousResponseID: req.PreviousResponseID, Store: true, Temperature: 1,
		ToolChoice: "auto", Tools: []struct{}{}, TopP: 1, Truncation: "disabled", Metadata: map[string]string{},
	}
	resp.Text.Format.Type = "text"
	if resp.Model == "" {
		resp.Model = s.cfg.Model
	}
	item := outputItem{ID: fmt.Sprintf("msg_%s%016x", s.idPrefix, seq), Type: "message", Status: "in_progress", Role: "assistant", Content: []outputText{}}
	// finished completes resp with text: "length" is OpenAI's incomplete
	// response (max_output_tokens reached).
	finished := func(text string) (*responseObject, outputItem) {
		part := outputText{Type: "output_text", Text: text, Annotations: []struct{}{}, Logprobs: []struct{}{}}
		done, it := *resp, item
		it.Status, it.Content = "completed", []outputText{part}
		done.Status = "completed"
		if finish == "length" {
			done.Status, it.Status = "incomplete", "incomplete"
			done.IncompleteDetails = &incompleteDetails{Reason: "max_output_tokens"}
		}
		done.Output = []outputItem{it}
		u := &responsesUsage{InputTokens: req.PromptTokens, OutputTokens: n, TotalTokens: req.PromptTokens + n}
		u.InputTokensDetails.CachedTokens = cached
		done.Usage = u
		return &done, it
	}
	p := s.newPacer(r, c, ttft)
	if !req.Stream {
		if o := p.wait(n - 1); o != served {
			return o
		}
		done, _ := finished(req.text(n))
		writeJSON(w, http.StatusOK, done)
		return s.answered(&req.genRequest, cached, n)
	}

	st := newStream(w)
	ev := &eventSeq{st: st}
	zero := 0
	emptyPart := outputText{Type: "output_text", Annotations: []struct{}{}, Logprobs: []struct{}{}}
	noLogprobs := &[]struct{}{}
	for _, e := range []responseEvent{
		{Type: "response.created", Response: resp},
		{Type: "response.in_progress", Response: resp},
		{Type: "response.output_item.added", OutputIndex: &zero, Item: &item},
		{Type: "response.content_part.added", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero, Part: &emptyPart},
	} {
		if err := ev.send(e); err != nil {
			return cancelled
		}
	}
	for i := range n {
		if o := p.wait(i); o != served {
			return o
		}
		tok := req.token(i)
		if err := ev.send(responseEvent{Type: "response.output_text.delta", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero,
			Delta: &tok, Logprobs: noLogprobs}); err != nil {
			return cancelled
		}
	}
	text := req.text(n)
	done, doneItem := finished(text)
	last := "response.completed"
	if done.Status == "incomplete" {
		last = "response.incomplete"
	}
	for _, e := range []responseEvent{
		{Type: "response.output_text.done", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero, Text: &text, Logprobs: noLogprobs},
		{Type: "response.content_part.done", ItemID: item.ID, OutputIndex: &zero, ContentIndex: &zero, Part: &doneItem.Content[0]},
		{Type: "response.output_item.done", OutputIndex: &zero, Item: &doneItem},
		{Type: last, Response: done},
	} {
		if err := ev.send(e); err != nil {
			return cancelled
		}
	}
	return s.answered(&req.genRequest, cached, n)
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
