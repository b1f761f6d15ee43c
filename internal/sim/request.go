package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
)

const (
	// MaxBodyBytes bounds a request body, as a server in front of a real
	// worker would: long prompts fit, a runaway upload does not.
	MaxBodyBytes = 8 << 20
	// maxInputs bounds the prompts or embedding inputs of one request
	// (OpenAI's own limit for embeddings).
	maxInputs = 2048
)

// errTooLarge is a body over MaxBodyBytes (413).
var errTooLarge = fmt.Errorf("body larger than %d bytes", MaxBodyBytes)

// readBody reads a request body, at most MaxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errTooLarge
		}
		return nil, fmt.Errorf("read body: %w", err)
	}
	return b, nil
}

// reject answers a body that could not be read or decoded.
func reject(w http.ResponseWriter, err error) outcome {
	status := http.StatusBadRequest
	if errors.Is(err, errTooLarge) {
		status = http.StatusRequestEntityTooLarge
	}
	writeError(w, status, "invalid_request_error", err.Error())
	return rejected
}

// genRequest is what the simulator needs from a chat completion or a
// completion request.
type genRequest struct {
	Model        string // as the request named it; "" when it did not
	Stream       bool
	IncludeUsage bool // stream_options.include_usage
	MaxTokens    int  // 0: the request sets no limit
	PromptTokens int
	// Prompt is the prompt's tokens as the prefix cache sees them;
	// Prompt.n is PromptTokens.
	Prompt promptHash
	// Messages says the prompt is a list of messages (chat, responses), so
	// that an answer continues it as an assistant message, not as text.
	Messages bool
	// Cont says the prompt ends with the start of the simulator's own
	// answer, which the request asks it to go on with; nil for a fresh
	// answer.
	Cont *continuation
	// Fixed, when not nil, is the whole answer's tokens: a JSON document
	// (structured output) or a call's arguments, which end by themselves.
	// nil for the endless text of Token.
	Fixed []string
	// Call is the function the answer calls, its arguments Fixed; "" for
	// an answer in text.
	Call string
}

// genFields are the fields chat completions and completions share.
type genFields struct {
	Model         *string `json:"model"`
	Stream        *bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage *bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int `json:"max_tokens"`
	MaxCompletionTokens *int `json:"max_completion_tokens"`
	NPredict            *int `json:"n_predict"` // llama-server's own name
}

func (f genFields) request() (genRequest, error) {
	var g genRequest
	if f.Model != nil {
		g.Model = *f.Model
	}
	if f.Stream != nil {
		g.Stream = *f.Stream
	}
	if f.StreamOptions != nil && f.StreamOptions.IncludeUsage != nil {
		g.IncludeUsage = *f.StreamOptions.IncludeUsage
	}
	// max_completion_tokens replaces max_tokens in OpenAI's API; either
	// may come. A negative limit is llama-server's "until the model
	// stops" (its web UI sends -1).
	for _, lim := range []struct {
		name string
		v    *int
	}{{"max_completion_tokens", f.MaxCompletionTokens}, {"max_tokens", f.MaxTokens}, {"n_predict", f.NPredict}} {
		if lim.v == nil {
			continue
		}
		if *lim.v == 0 {
			return genRequest{}, fmt.Errorf("%s must be at least 1", lim.name)
		}
		if *lim.v > 0 {
			g.MaxTokens = *lim.v
		}
		break
	}
	return g, nil
}

// decodeObject unmarshals a JSON object body into v, saying what is wrong in
// words a client can act on.
func decodeObject(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return errors.New("empty body: want a JSON object")
	}
	if body[0] != '{' {
		return errors.New("body is not a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			// The path names an embedded struct by its Go type; the
			// client knows only its fields.
			field := strings.TrimPrefix(te.Field, "genFields.")
			return fmt.Errorf("%s: want %s, got %s", field, jsonKind(te.Type), te.Value)
		}
		return fmt.Errorf("body is not valid JSON: %w", err)
	}
	return nil
}

// jsonKind names the JSON a Go type decodes from, for error messages.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	default:
		return "an object"
	}
}

// chatBody is a chat completion request.
type chatBody struct {
	genFields
	Messages *[]chatMessage `json:"messages"`
	// vLLM's way to continue the last (assistant) message; llama-server
	// and Ollama continue a trailing assistant message unasked.
	ContinueFinalMessage *bool `json:"continue_final_message"`
	AddGenerationPrompt  *bool `json:"add_generation_prompt"`
	// Tools and structured output (see shape).
	Tools          json.RawMessage `json:"tools"`
	ToolChoice     json.RawMessage `json:"tool_choice"`
	ResponseFormat json.RawMessage `json:"response_format"`
	Seed           *int64          `json:"seed"`
}

type chatMessage struct {
	Role    *string         `json:"role"`
	Content json.RawMessage `json:"content"`
}

// decodeChat reads a chat completion request.
func decodeChat(body []byte) (genRequest, error) {
	var b chatBody
	if err := decodeObject(body, &b); err != nil {
		return genRequest{}, err
	}
	if b.Messages == nil {
		return genRequest{}, errors.New(`"messages" is required`)
	}
	if len(*b.Messages) == 0 {
		return genRequest{}, errors.New(`"messages" must hold at least one message`)
	}
	g, err := b.request()
	if err != nil {
		return genRequest{}, err
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	if isTrue(b.ContinueFinalMessage) && isTrue(b.AddGenerationPrompt) {
		return genRequest{}, errors.New("continue_final_message and add_generation_prompt cannot both be true")
	}
	// Asking for a new turn in vLLM's words, one way or the other, gets
	// one, as from vLLM.
	continues := !isTrue(b.AddGenerationPrompt) && (b.ContinueFinalMessage == nil || *b.ContinueFinalMessage)
	sh := shape{seed: b.Seed}
	if sh.funcs, err = decodeTools(b.Tools, false); err != nil {
		return genRequest{}, err
	}
	if err := sh.decodeToolChoice(b.ToolChoice); err != nil {
		return genRequest{}, err
	}
	if err := sh.decodeFormat(b.ResponseFormat, false); err != nil {
		return genRequest{}, err
	}
	if len(sh.funcs) > 0 {
		// A chat template writes the tools' definitions into the prompt.
		g.Prompt.text(string(b.Tools))
	}
	var t tail
	last := len(*b.Messages) - 1
	for i, m := range *b.Messages {
		if m.Role == nil || *m.Role == "" {
			return genRequest{}, fmt.Errorf("messages[%d].role is required", i)
		}
		text, err := messageText(m.Content)
		if err != nil {
			return genRequest{}, fmt.Errorf("messages[%d].content: %w", i, err)
		}
		if i == last && continues && *m.Role == "assistant" {
			g.Cont = continuationOf(g.Prompt, text)
			t.assistant, t.base, t.text, t.baseConv = true, g.Prompt, text, t.conv
		}
		t.tool = i == last && (*m.Role == "tool" || *m.Role == "function")
		t.conv.add(*m.Role, text)
		// A few tokens of framing per message, as chat templates add.
		g.Prompt.message(*m.Role, text)
	}
	g.PromptTokens, g.Messages = g.Prompt.n, true
	if err := sh.apply(&g, t); err != nil {
		return genRequest{}, err
	}
	return g, nil
}

// continuationOf is the continuation of a prompt that ends, after base,
// with an assistant message saying prefix; nil when prefix does not start
// the simulator's answer, which is then answered afresh, as a model would
// say something of its own after text it did not write.
func continuationOf(base promptHash, prefix string) *continuation {
	k, rest, ok := Continues(prefix)
	if !ok {
		return nil
	}
	return &continuation{k: k, rest: rest, base: base, prefix: prefix}
}

// messageText reads a message's content: a string, an array of content
// parts (their text), or null (an assistant message with tool calls).
func messageText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errors.New("not a valid string")
		}
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("want a string or an array of content parts")
	}
	var sb strings.Builder
	for i, p := range parts {
		if p.Type == "" {
			return "", fmt.Errorf("part %d: type is required", i)
		}
		sb.WriteString(p.Text)
	}
	return sb.String(), nil
}

// completionBody is a (legacy) completion request.
type completionBody struct {
	genFields
	Prompt json.RawMessage `json:"prompt"`
}

// decodeCompletion reads a completion request. Several prompts are allowed
// and counted, but answered with one choice.
func decodeCompletion(body []byte) (genRequest, error) {
	var b completionBody
	if err := decodeObject(body, &b); err != nil {
		return genRequest{}, err
	}
	g, err := b.request()
	if err != nil {
		return genRequest{}, err
	}
	inputs, err := decodeInputs("prompt", b.Prompt)
	if err != nil {
		return genRequest{}, err
	}
	for _, in := range inputs {
		if in.ids != nil {
			g.Prompt.ids(in.ids)
		} else {
			g.Prompt.text(in.key)
		}
	}
	g.PromptTokens = g.Prompt.n
	// A completion continues its prompt's text: when that ends with the
	// start of the answer, the answer goes on from there. Token ids are
	// not text the simulator could recognise its answer in.
	if len(inputs) == 1 && inputs[0].ids == nil {
		if p := answerSuffix(inputs[0].key); p != "" {
			k, rest, _ := Continues(p)
			g.Cont = &continuation{k: k, rest: rest}
		}
	}
	return g, nil
}

// embeddingBody is an embeddings request.
type embeddingBody struct {
	Model          *string         `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat *string         `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

type embeddingRequest struct {
	Model  string
	Inputs []input
	Base64 bool
	Dim    int // 0: the simulator's own
}

// decodeEmbedding reads an embeddings request.
func decodeEmbedding(body []byte, maxDim int) (embeddingRequest, error) {
	var b embeddingBody
	if err := decodeObject(body, &b); err != nil {
		return embeddingRequest{}, err
	}
	var e embeddingRequest
	if b.Model != nil {
		e.Model = *b.Model
	}
	if b.EncodingFormat != nil {
		switch *b.EncodingFormat {
		case "float", "":
		case "base64":
			e.Base64 = true
		default:
			return embeddingRequest{}, fmt.Errorf("encoding_format %q: want float or base64", *b.EncodingFormat)
		}
	}
	if b.Dimensions != nil {
		if *b.Dimensions < 1 || *b.Dimensions > maxDim {
			return embeddingRequest{}, fmt.Errorf("dimensions %d: want 1 to %d", *b.Dimensions, maxDim)
		}
		e.Dim = *b.Dimensions
	}
	var err error
	if e.Inputs, err = decodeInputs("input", b.Input); err != nil {
		return embeddingRequest{}, err
	}
	return e, nil
}

// input is one prompt or embedding input: text, or token ids.
type input struct {
	key    string  // the text, or the ids in decimal: what the output derives from
	ids    []int64 // the token ids; nil for a text
	tokens int
}

// decodeInputs reads OpenAI's polymorphic prompt/input: a string, an array
// of strings, an array of token ids, or an array of arrays of token ids.
func decodeInputs(name string, raw json.RawMessage) ([]input, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, fmt.Errorf("%q is required", name)
	}
	bad := fmt.Errorf("%s: want a string, an array of strings, an array of token ids or an array of arrays of token ids", name)
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, bad
		}
		return []input{textInput(s)}, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, bad
	}
	switch {
	case len(items) == 0:
		return nil, fmt.Errorf("%s must not be empty", name)
	case len(items) > maxInputs:
		return nil, fmt.Errorf("%s: %d items, at most %d", name, len(items), maxInputs)
	}
	// One array of token ids is one input.
	var ids []int64
	if err := json.Unmarshal(raw, &ids); err == nil {
		return []input{tokenInput(ids)}, nil
	}
	out := make([]input, 0, len(items))
	for i, it := range items {
		var s string
		if err := json.Unmarshal(it, &s); err == nil {
			out = append(out, textInput(s))
			continue
		}
		var ids []int64 // a new slice each time: the input keeps it
		if err := json.Unmarshal(it, &ids); err != nil || len(ids) == 0 {
			return nil, fmt.Errorf("%s[%d]: want a string or a non-empty array of token ids", name, i)
		}
		out = append(out, tokenInput(ids))
	}
	return out, nil
}

func textInput(s string) input { return input{key: s, tokens: countTokens(s)} }

func tokenInput(ids []int64) input {
	var sb strings.Builder
	sb.WriteString("\x00ids") // never equal to a text key
	for _, id := range ids {
		sb.WriteByte(' ')
		sb.WriteString(strconv.FormatInt(id, 10))
	}
	return input{key: sb.String(), ids: ids, tokens: len(ids)}
}

// countTokens estimates a text's tokens the usual way: about four bytes of
// English a token, at least one for any text.
func countTokens(s string) int {
	if s == "" {
		return 0
	}
	return (len(s) + 3) / 4
}
