package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
)

// Tools and structured output. A chat completion or response that offers
// functions (tools) is answered with a call of one of them, as a model
// that wants a tool would: the function tool_choice names, else the first;
// its arguments are a JSON document valid against the function's
// parameters (see exampleJSON), derived from the conversation. tool_choice
// "none" gets text; so does "auto" (or none given) when the conversation
// already ends with a tool's result, so that an agent's loop of calls and
// results ends. "required" or a named function is called whatever came
// before, as the API promises.
//
// A request for JSON (response_format in chat completions, text.format in
// the Responses API: json_object, or json_schema with a schema) is answered
// with text that is such a document: a generic object for json_object.
// Such an answer ends where the document does, whatever the configured
// length; a max_tokens below its length cuts it ("length"), as with a
// model. It is continued byte for byte as any answer is (see Continues),
// by its own tokens: an assistant message that starts it, last in the
// conversation, is gone on from.

// shape is what a request asks its answer to be, beyond text.
type shape struct {
	funcs  []function
	choice string // "auto", "none", "required", or "function" (named)
	named  string // the function tool_choice names
	// format is the JSON schema of the document the answer must be, or
	// nil for text; json_object's is genericObject.
	format json.RawMessage
	seed   *int64 // the request's own seed
}

// function is one function a request offers.
type function struct {
	name   string
	params json.RawMessage // a JSON schema; nil for none
}

// genericObject is what the answer to json_object holds: any object is
// valid, and a client that wants particular keys asks for json_schema.
var genericObject = json.RawMessage(`{"type":"object","properties":{"answer":{"type":"string","minLength":12}},"required":["answer"]}`)

// toolFunction is the name and parameters of a function tool.
type toolFunction struct {
	Name       *string         `json:"name"`
	Parameters json.RawMessage `json:"parameters"`
}

// wireTool is a tool in either API's shape: Chat Completions nests the
// function ({"type":"function","function":{"name":...,"parameters":...}}),
// the Responses API does not ({"type":"function","name":...}).
type wireTool struct {
	Type *string `json:"type"`
	toolFunction
	Function *toolFunction `json:"function"`
}

// decodeTools reads the functions of a request's tools, in either API's
// shape. Tools of other types (a hosted web search) are left out: the
// simulator has none to call.
func decodeTools(raw json.RawMessage, flat bool) ([]function, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, errors.New("tools: want an array of tools")
	}
	var fs []function
	for i, it := range items {
		var t wireTool
		if err := json.Unmarshal(it, &t); err != nil || t.Type == nil {
			return nil, fmt.Errorf("tools[%d]: want an object with a type", i)
		}
		if *t.Type != "function" {
			continue
		}
		f, where := t.toolFunction, fmt.Sprintf("tools[%d].", i)
		if !flat {
			if t.Function == nil {
				return nil, fmt.Errorf("tools[%d].function is required", i)
			}
			f, where = *t.Function, where+"function."
		}
		if f.Name == nil || *f.Name == "" {
			return nil, fmt.Errorf("%sname is required", where)
		}
		params := bytes.TrimSpace(f.Parameters)
		if string(params) == "null" {
			params = nil
		}
		if len(params) > 0 && params[0] != '{' {
			return nil, fmt.Errorf("%sparameters: want a JSON schema object", where)
		}
		fs = append(fs, function{name: *f.Name, params: params})
	}
	return fs, nil
}

// decodeToolChoice reads tool_choice into sh: a string, or an object
// naming a function ({"type":"function","function":{"name":...}} in chat
// completions, {"type":"function","name":...} in the Responses API). Other
// objects (a hosted tool, allowed_tools) leave the choice to the model.
func (sh *shape) decodeToolChoice(raw json.RawMessage) error {
	sh.choice = "auto"
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return errors.New("tool_choice: not a valid string")
		}
		switch s {
		case "auto", "none", "required":
			sh.choice = s
		default:
			return fmt.Errorf("tool_choice %q: want none, auto, required or an object naming a function", s)
		}
		if s == "required" && len(sh.funcs) == 0 {
			return errors.New(`tool_choice "required" needs at least one function in tools`)
		}
		return nil
	}
	var o struct {
		Type     string  `json:"type"`
		Name     *string `json:"name"`
		Function *struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		return errors.New("tool_choice: want a string or an object")
	}
	if o.Type != "function" {
		return nil
	}
	switch {
	case o.Function != nil && o.Function.Name != "":
		sh.named = o.Function.Name
	case o.Name != nil && *o.Name != "":
		sh.named = *o.Name
	default:
		return errors.New("tool_choice: a function choice needs the function's name")
	}
	for _, f := range sh.funcs {
		if f.name == sh.named {
			sh.choice = "function"
			return nil
		}
	}
	return fmt.Errorf("tool_choice names function %q, which tools does not hold", sh.named)
}

// decodeFormat reads response_format (chat completions) or text.format
// (the Responses API, where json_schema's fields sit beside its type) into
// sh.format.
func (sh *shape) decodeFormat(raw json.RawMessage, flat bool) error {
	name := "response_format"
	if flat {
		name = "text.format"
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var f struct {
		Type       *string         `json:"type"`
		Schema     json.RawMessage `json:"schema"`
		JSONSchema *struct {
			Schema json.RawMessage `json:"schema"`
		} `json:"json_schema"`
	}
	if err := json.Unmarshal(raw, &f); err != nil || f.Type == nil {
		return fmt.Errorf("%s: want an object with a type", name)
	}
	switch *f.Type {
	case "text":
	case "json_object":
		sh.format = genericObject
	case "json_schema":
		schema, where := f.Schema, name+".schema"
		if !flat {
			if f.JSONSchema == nil {
				return fmt.Errorf("%s.json_schema is required", name)
			}
			schema, where = f.JSONSchema.Schema, name+".json_schema.schema"
		}
		schema = bytes.TrimSpace(schema)
		if len(schema) == 0 || schema[0] != '{' {
			return fmt.Errorf("%s is required: a JSON schema object", where)
		}
		sh.format = schema
	default:
		return fmt.Errorf("%s.type %q: want text, json_object or json_schema", name, *f.Type)
	}
	return nil
}

// tail is the end of a request's conversation, which decides what the
// answer is.
type tail struct {
	// tool says the last message is a tool's result.
	tool bool
	// assistant says the last message is the assistant's, which the
	// request asks to go on with: base is the prompt before it, text its
	// text.
	assistant bool
	base      promptHash
	text      string
	// conv hashes the conversation, baseConv the conversation before
	// the assistant's last message: what generated values derive from.
	conv, baseConv convHash
}

// convHash hashes a conversation by its messages' roles and texts only, to
// seed generated values: a Responses input given as a string is the same
// conversation as one user message with that text (as rbee's migration
// sends it again), whatever the prompt's tokens.
type convHash uint64

func (c *convHash) add(role, text string) {
	h := fnv.New64a()
	_, _ = h.Write([]byte(role))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(text))
	*c = convHash(mix64(uint64(*c)*0x9e3779b97f4a7c15 ^ h.Sum64()))
}

// apply makes g's answer what sh asks for, given how the conversation
// ends: a call (g.Call, its arguments in g.Fixed), a JSON document
// (g.Fixed, continued from an assistant message that starts it), or text
// as before.
func (sh *shape) apply(g *genRequest, t tail) error {
	seed := func(c convHash) uint64 {
		h := uint64(c)
		if sh.seed != nil {
			h = mix64(h ^ uint64(*sh.seed))
		}
		return h
	}
	if f, ok := sh.call(t); ok {
		args := []byte("{}")
		if f.params != nil {
			h := fnv.New64a()
			_, _ = h.Write([]byte(f.name))
			var err error
			if args, err = exampleJSON(f.params, seed(t.conv)^h.Sum64()); err != nil {
				return fmt.Errorf("function %q: parameters: %w", f.name, err)
			}
		}
		g.Call, g.Fixed, g.Cont = f.name, splitTokens(string(args)), nil
		return nil
	}
	if sh.format == nil {
		return nil
	}
	// The document comes from the conversation before an assistant
	// message that may hold its start, so that the request that
	// continues it derives the same document.
	base := t.conv
	if t.assistant {
		base = t.baseConv
	}
	doc, err := exampleJSON(sh.format, seed(base))
	if err != nil {
		return fmt.Errorf("response format: %w", err)
	}
	g.Fixed, g.Cont = splitTokens(string(doc)), nil
	if t.assistant {
		if k, rest, ok := continuesFixed(g.Fixed, t.text); ok {
			g.Cont = &continuation{k: k, rest: rest, base: t.base, prefix: t.text}
		}
	}
	return nil
}

// call returns the function the answer calls, if any.
func (sh *shape) call(t tail) (function, bool) {
	switch {
	case len(sh.funcs) == 0 || sh.choice == "none" || (sh.choice == "auto" && t.tool):
		return function{}, false
	case sh.choice == "function":
		for _, f := range sh.funcs {
			if f.name == sh.named {
				return f, true
			}
		}
	}
	return sh.funcs[0], true
}

// continuesFixed is Continues for an answer made of toks: whether prefix
// starts it, and where it goes on from (in toks[k], of which rest is still
// to come; k is len(toks) and rest "" when prefix is all of it).
func continuesFixed(toks []string, prefix string) (k int, rest string, ok bool) {
	at := 0
	for i, t := range toks {
		if at+len(t) > len(prefix) {
			cut := len(prefix) - at
			if t[:cut] != prefix[at:] {
				return 0, "", false
			}
			return i, t[cut:], true
		}
		if prefix[at:at+len(t)] != t {
			return 0, "", false
		}
		at += len(t)
	}
	if at != len(prefix) {
		return 0, "", false
	}
	return len(toks), "", true
}
