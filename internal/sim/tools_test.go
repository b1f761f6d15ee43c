package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

const (
	weatherSchema = `{"type":"object","properties":{"city":{"type":"string","minLength":2},"unit":{"type":"string","enum":["celsius","fahrenheit"]},` +
		`"days":{"type":"integer","minimum":1,"maximum":7}},"required":["city","unit","days"],"additionalProperties":false}`
	timeSchema = `{"type":"object","properties":{"zone":{"type":"string","format":"hostname"},"at":{"type":"string","format":"date-time"}},"required":["zone"]}`
	tripSchema = `{"type":"object","properties":{"destination":{"type":"string"},"nights":{"type":"integer","minimum":1,"maximum":14},` +
		`"travellers":{"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0}},"required":["name","age"]},"minItems":1},` +
		`"notes":{"anyOf":[{"type":"string"},{"type":"null"}]}},"required":["destination","nights","travellers","notes"]}`
	// chatTools offers get_weather, then get_time.
	chatTools = `"tools":[{"type":"function","function":{"name":"get_weather","description":"The weather now.","parameters":` + weatherSchema + `}},` +
		`{"type":"function","function":{"name":"get_time","parameters":` + timeSchema + `}}]`
	// flatTools is the same in the Responses API's shape, beside a hosted
	// tool the simulator does not call.
	flatTools = `"tools":[{"type":"web_search_preview"},{"type":"function","name":"get_weather","parameters":` + weatherSchema + `,"strict":true},` +
		`{"type":"function","name":"get_time","parameters":` + timeSchema + `}]`
	askWeather = `{"role":"user","content":"Weather in Paris?"}`
)

var toolSchemas = map[string]string{"get_weather": weatherSchema, "get_time": timeSchema}

// chatCall is a chat completion as a client reads a call from it.
type chatCall struct {
	Choices []struct {
		Message struct {
			Role      string          `json:"role"`
			Content   json.RawMessage `json:"content"`
			ToolCalls []struct {
				ID       string `json:"id"`
				Type     string `json:"type"`
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage usage `json:"usage"`
}

func TestTools_ChatAnswersWithACall(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	toolResult := `{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},` +
		`{"role":"tool","tool_call_id":"call_1","content":"21 degrees"}`
	for _, tc := range []struct {
		name     string
		extra    string // fields after the tools
		messages string
		want     string // the function called; "" for text
	}{
		{"auto calls the first", ``, askWeather, "get_weather"},
		{"required calls the first", `,"tool_choice":"required"`, askWeather, "get_weather"},
		{"a named function", `,"tool_choice":{"type":"function","function":{"name":"get_time"}}`, askWeather, "get_time"},
		{"none answers in text", `,"tool_choice":"none"`, askWeather, ""},
		{"after a tool's result, text", ``, askWeather + "," + toolResult, ""},
		{"after a tool's result, required still calls", `,"tool_choice":"required"`, askWeather + "," + toolResult, "get_weather"},
		{"with response_format too, the call wins", `,"response_format":{"type":"json_object"}`, askWeather, "get_weather"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c chatCall
			ts.postJSON(t, "/v1/chat/completions", `{"messages":[`+tc.messages+`],`+chatTools+tc.extra+`}`, &c)
			if len(c.Choices) != 1 {
				t.Fatalf("choices %+v", c.Choices)
			}
			ch := c.Choices[0]
			if tc.want == "" {
				var text string
				if len(ch.Message.ToolCalls) != 0 || ch.FinishReason != "stop" || json.Unmarshal(ch.Message.Content, &text) != nil || text != Text(DefaultMaxTokens) {
					t.Fatalf("message %+v (%s), want the text and no call", ch.Message, ch.FinishReason)
				}
				return
			}
			if ch.FinishReason != "tool_calls" || ch.Message.Role != "assistant" || string(ch.Message.Content) != "null" || len(ch.Message.ToolCalls) != 1 {
				t.Fatalf("message %+v (%s), want one call, content null, finish_reason tool_calls", ch.Message, ch.FinishReason)
			}
			call := ch.Message.ToolCalls[0]
			if call.Type != "function" || !strings.HasPrefix(call.ID, "call_") || call.Function.Name != tc.want {
				t.Fatalf("call %+v, want a call_ id of %s", call, tc.want)
			}
			validates(t, validator(t, toolSchemas[tc.want]), []byte(call.Function.Arguments))
			if n := len(splitTokens(call.Function.Arguments)); c.Usage.CompletionTokens != n {
				t.Errorf("completion tokens %d, want the %d tokens of the arguments", c.Usage.CompletionTokens, n)
			}
		})
	}
}

// The arguments come from the prompt: the same request gets the same call,
// another prompt other values.
func TestTools_ArgumentsFollowThePrompt(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	args := func(question string) string {
		var c chatCall
		ts.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"`+question+`"}],`+chatTools+`}`, &c)
		return c.Choices[0].Message.ToolCalls[0].Function.Arguments
	}
	if a, b := args("Weather in Paris?"), args("Weather in Paris?"); a != b {
		t.Errorf("the same request called with %s, then %s", a, b)
	}
	seen := map[string]bool{}
	for i := range 8 {
		seen[args(fmt.Sprintf("Weather in city %d?", i))] = true
	}
	if len(seen) < 4 {
		t.Errorf("8 prompts gave %d distinct arguments: %v", len(seen), seen)
	}
}

// chatToolChunk is a streamed chat chunk as a client reads a call from it.
type chatToolChunk struct {
	Choices []struct {
		Delta struct {
			Role      *string         `json:"role"`
			Content   json.RawMessage `json:"content"` // "null" when null, nil when absent
			ToolCalls []struct {
				Index    *int    `json:"index"`
				ID       *string `json:"id"`
				Type     *string `json:"type"`
				Function struct {
					Name      *string `json:"name"`
					Arguments *string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

// A streamed call comes as OpenAI sends one: a first delta with the role,
// the call's index, id, type, name and empty arguments, then pieces of the
// arguments under the same index, then finish_reason tool_calls. The
// pieces make the non-streamed call's arguments.
func TestTools_ChatStreamsTheCallInPieces(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	body := `{"messages":[` + askWeather + `],` + chatTools + `,"tool_choice":{"type":"function","function":{"name":"get_weather"}}`
	var whole chatCall
	ts.postJSON(t, "/v1/chat/completions", body+`}`, &whole)
	want := whole.Choices[0].Message.ToolCalls[0].Function.Arguments

	resp := ts.post(context.Background(), t, "/v1/chat/completions", body+`,"stream":true,"stream_options":{"include_usage":true}}`)
	defer resp.Body.Close()
	events := readSSE(t, resp.Body)
	if len(events) < 5 {
		t.Fatalf("%d events: %q", len(events), events)
	}
	var args strings.Builder
	var pieces int
	for i, ev := range events[:len(events)-1] {
		var c chatToolChunk
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatalf("event %d: %v: %s", i, err, ev)
		}
		switch {
		case i == 0:
			d := c.Choices[0].Delta
			if d.Role == nil || *d.Role != "assistant" || string(d.Content) != "null" || len(d.ToolCalls) != 1 {
				t.Fatalf("first event %s, want the role, content null and the call", ev)
			}
			tc := d.ToolCalls[0]
			if tc.Index == nil || *tc.Index != 0 || tc.ID == nil || !strings.HasPrefix(*tc.ID, "call_") || tc.Type == nil || *tc.Type != "function" ||
				tc.Function.Name == nil || *tc.Function.Name != "get_weather" || tc.Function.Arguments == nil || *tc.Function.Arguments != "" {
				t.Fatalf("first event %s, want index 0, an id, type function, the name and no arguments yet", ev)
			}
		case i == len(events)-2:
			if c.Usage == nil || c.Usage.CompletionTokens != pieces || len(c.Choices) != 0 {
				t.Fatalf("usage event %s, want %d completion tokens", ev, pieces)
			}
		case i == len(events)-3:
			if len(c.Choices) != 1 || c.Choices[0].FinishReason == nil || *c.Choices[0].FinishReason != "tool_calls" {
				t.Fatalf("last choice event %s, want finish_reason tool_calls", ev)
			}
		default:
			d := c.Choices[0].Delta
			if c.Choices[0].FinishReason != nil || d.Role != nil || d.Content != nil || len(d.ToolCalls) != 1 {
				t.Fatalf("event %d: %s, want a piece of the arguments only", i, ev)
			}
			tc := d.ToolCalls[0]
			if tc.Index == nil || *tc.Index != 0 || tc.ID != nil || tc.Function.Name != nil || tc.Function.Arguments == nil || *tc.Function.Arguments == "" {
				t.Fatalf("event %d: %s, want index 0 and arguments", i, ev)
			}
			args.WriteString(*tc.Function.Arguments)
			pieces++
		}
	}
	if args.String() != want || pieces < 5 {
		t.Fatalf("streamed arguments %q in %d pieces, want %q", args.String(), pieces, want)
	}
	validates(t, validator(t, weatherSchema), []byte(args.String()))
}

// response_format and text.format get a document valid against the
// schema, streamed or not, through either API; json_object an object.
func TestStructured_DocumentForTheFormat(t *testing.T) {
	ts := startSim(t, Config{Model: "m", MaxTokens: 3})
	for _, tc := range []struct {
		name, path, body, schema string
	}{
		{"chat json_schema", "/v1/chat/completions", `{"messages":[{"role":"user","content":"Plan a trip"}],"response_format":{"type":"json_schema","json_schema":{"name":"trip","strict":true,"schema":` + tripSchema + `}}`, tripSchema},
		{"chat json_object", "/v1/chat/completions", `{"messages":[{"role":"user","content":"JSON please"}],"response_format":{"type":"json_object"}`, `{"type":"object"}`},
		{"chat tool_choice none", "/v1/chat/completions", `{"messages":[{"role":"user","content":"Plan a trip"}],` + chatTools + `,"tool_choice":"none","response_format":{"type":"json_schema","json_schema":{"name":"trip","schema":` + tripSchema + `}}`, tripSchema},
		{"responses json_schema", "/v1/responses", `{"input":"Plan a trip","text":{"format":{"type":"json_schema","name":"trip","strict":true,"schema":` + tripSchema + `}}`, tripSchema},
		{"responses json_object", "/v1/responses", `{"input":"JSON please","text":{"format":{"type":"json_object"}}`, `{"type":"object"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sch := validator(t, tc.schema)
			var doc string
			if tc.path == "/v1/responses" {
				var r response
				ts.postJSON(t, tc.path, tc.body+`}`, &r)
				var err error
				if doc, err = r.text(); err != nil || r.Status != "completed" {
					t.Fatalf("%v, status %s", err, r.Status)
				}
			} else {
				var a struct {
					Choices []struct {
						Message struct {
							Content *string `json:"content"`
						} `json:"message"`
						FinishReason string `json:"finish_reason"`
					} `json:"choices"`
				}
				ts.postJSON(t, tc.path, tc.body+`}`, &a)
				if len(a.Choices) != 1 || a.Choices[0].Message.Content == nil || a.Choices[0].FinishReason != "stop" {
					t.Fatalf("answer %+v, want content and finish_reason stop", a)
				}
				doc = *a.Choices[0].Message.Content
			}
			// Longer than the configured 3 tokens: a document ends where
			// it ends.
			validates(t, sch, []byte(doc))
			text, finish, tokens := streamed(t, ts, tc.path, tc.body+`,"stream":true}`)
			if text != doc || tokens != len(splitTokens(doc)) || (finish != "stop" && finish != "completed") {
				t.Fatalf("streamed %q in %d tokens (%s), want %q", text, tokens, finish, doc)
			}
		})
	}
}

// A max_tokens below the document's length cuts it, as a model's limit
// would: finish_reason length, the document's start.
func TestStructured_MaxTokensCutsTheDocument(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	body := `{"messages":[{"role":"user","content":"Plan a trip"}],"response_format":{"type":"json_schema","json_schema":{"name":"trip","schema":` + tripSchema + `}}`
	var a chatAnswer
	ts.postJSON(t, "/v1/chat/completions", body+`}`, &a)
	full := *a.Choices[0].Message.Content
	text, finish, tokens := streamed(t, ts, "/v1/chat/completions", body+`,"max_tokens":4,"stream":true}`)
	if finish != "length" || tokens != 4 || !strings.HasPrefix(full, text) || text == full {
		t.Fatalf("got %q (%s, %d tokens), want the first 4 tokens of %q", text, finish, tokens, full)
	}
}

// A document cut anywhere, sent back as the assistant's message (as rbee
// does when it moves a stream off a worker that died), is continued to the
// byte: prefix and continuation are the document.
func TestStructured_ContinuesADocument(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	format := `"response_format":{"type":"json_schema","json_schema":{"name":"w","schema":` + weatherSchema + `}}`
	var a chatAnswer
	ts.postJSON(t, "/v1/chat/completions", `{"messages":[`+askWeather+`],`+format+`}`, &a)
	full := *a.Choices[0].Message.Content
	rformat := `"text":{"format":{"type":"json_schema","name":"w","schema":` + weatherSchema + `}}`
	// An input given as a string is the conversation of one user message,
	// which is how rbee sends it again to continue it.
	var r response
	ts.postJSON(t, "/v1/responses", `{"input":"Weather in Paris?",`+rformat+`}`, &r)
	if rfull, _ := r.text(); rfull != full {
		t.Fatalf("responses answered %q, chat %q: the same conversation, the same document", rfull, full)
	}
	for cut := 0; cut <= len(full); cut += 3 {
		prefix, _ := json.Marshal(full[:cut])
		text, finish, _ := streamed(t, ts, "/v1/chat/completions",
			`{"messages":[`+askWeather+`,{"role":"assistant","content":`+string(prefix)+`}],`+format+`,"stream":true}`)
		if full[:cut]+text != full || finish != "stop" {
			t.Fatalf("cut at %d: continued with %q (%s), want %q", cut, text, finish, full[cut:])
		}
		rtext, _, _ := streamed(t, ts, "/v1/responses",
			`{"input":[`+askWeather+`,{"role":"assistant","content":[{"type":"output_text","text":`+string(prefix)+`}]}],`+rformat+`,"stream":true}`)
		if full[:cut]+rtext != full {
			t.Fatalf("responses, cut at %d: continued with %q, want %q", cut, rtext, full[cut:])
		}
	}
	// Text that does not start the document gets the whole document.
	text, _, _ := streamed(t, ts, "/v1/chat/completions", `{"messages":[`+askWeather+`,{"role":"assistant","content":"{\"town"}],`+format+`,"stream":true}`)
	validates(t, validator(t, weatherSchema), []byte(text))
}

// functionCallItem as the tests read it.
type fcItem struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Status    string `json:"status"`
	CallID    string `json:"call_id"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

func TestTools_ResponsesFunctionCall(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	for _, tc := range []struct {
		name, extra, input, want string
	}{
		{"first function", ``, `"Weather in Paris?"`, "get_weather"},
		{"named", `,"tool_choice":{"type":"function","name":"get_time"}`, `"Time?"`, "get_time"},
		{"none", `,"tool_choice":"none"`, `"Weather?"`, ""},
		{"after the function's output, text", ``, `[` + askWeather + `,{"type":"function_call","call_id":"c1","name":"get_weather","arguments":"{}"},` +
			`{"type":"function_call_output","call_id":"c1","output":"21 degrees"}]`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"input":` + tc.input + `,` + flatTools + tc.extra
			var raw struct {
				Status     string            `json:"status"`
				Output     []json.RawMessage `json:"output"`
				Tools      []json.RawMessage `json:"tools"`
				ToolChoice json.RawMessage   `json:"tool_choice"`
			}
			ts.postJSON(t, "/v1/responses", body+`}`, &raw)
			if len(raw.Tools) != 3 || raw.Status != "completed" || len(raw.Output) != 1 {
				t.Fatalf("response %+v, want the request's 3 tools echoed and one output item", raw)
			}
			var item fcItem
			_ = json.Unmarshal(raw.Output[0], &item)
			if tc.want == "" {
				var r response
				ts.postJSON(t, "/v1/responses", body+`}`, &r)
				if text, err := r.text(); err != nil || text != Text(DefaultMaxTokens) {
					t.Fatalf("output %s, want a message (%v)", raw.Output[0], err)
				}
				return
			}
			if item.Type != "function_call" || item.Status != "completed" || !strings.HasPrefix(item.ID, "fc_") || !strings.HasPrefix(item.CallID, "call_") || item.Name != tc.want {
				t.Fatalf("output %s, want a completed function_call of %s", raw.Output[0], tc.want)
			}
			validates(t, validator(t, toolSchemas[tc.want]), []byte(item.Arguments))

			// Streamed: OpenAI's events, the arguments in pieces.
			resp := ts.post(context.Background(), t, "/v1/responses", body+`,"stream":true}`)
			defer resp.Body.Close()
			events := readNamedEvents(t, resp.Body)
			var names []string
			var args string
			for i, e := range events {
				names = append(names, e.name)
				var ev struct {
					Type           string  `json:"type"`
					SequenceNumber int     `json:"sequence_number"`
					ItemID         string  `json:"item_id"`
					OutputIndex    *int    `json:"output_index"`
					Item           *fcItem `json:"item"`
					Delta          string  `json:"delta"`
					Arguments      string  `json:"arguments"`
					Response       *struct {
						Output []fcItem `json:"output"`
					} `json:"response"`
				}
				if err := json.Unmarshal([]byte(e.data), &ev); err != nil || ev.Type != e.name || ev.SequenceNumber != i {
					t.Fatalf("event %d %s: %s (%v)", i, e.name, e.data, err)
				}
				switch e.name {
				case "response.output_item.added":
					if ev.Item == nil || ev.Item.Type != "function_call" || ev.Item.Status != "in_progress" || ev.Item.Name != tc.want || ev.Item.Arguments != "" || ev.Item.CallID == "" || *ev.OutputIndex != 0 {
						t.Fatalf("added %s, want the call in progress with no arguments", e.data)
					}
				case "response.function_call_arguments.delta":
					if ev.ItemID == "" || ev.OutputIndex == nil || ev.Delta == "" {
						t.Fatalf("delta %s", e.data)
					}
					args += ev.Delta
				case "response.function_call_arguments.done":
					if ev.Arguments != args || ev.Arguments != item.Arguments {
						t.Fatalf("done %s, want the deltas %q, the same as unstreamed %q", e.data, args, item.Arguments)
					}
				case "response.output_item.done":
					if ev.Item == nil || ev.Item.Status != "completed" || ev.Item.Arguments != args {
						t.Fatalf("item done %s", e.data)
					}
				case "response.completed":
					if ev.Response == nil || len(ev.Response.Output) != 1 || ev.Response.Output[0].Arguments != args {
						t.Fatalf("completed %s", e.data)
					}
				}
			}
			pieces := len(splitTokens(args))
			want := []string{"response.created", "response.in_progress", "response.output_item.added"}
			for range pieces {
				want = append(want, "response.function_call_arguments.delta")
			}
			want = append(want, "response.function_call_arguments.done", "response.output_item.done", "response.completed")
			if strings.Join(names, " ") != strings.Join(want, " ") {
				t.Fatalf("events\n%s\nwant\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func TestTools_BadRequestsAre400(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	msgs := `"messages":[` + askWeather + `]`
	for _, tc := range []struct {
		name, path, body, want string
	}{
		{"choice names a missing function", "/v1/chat/completions", `{` + msgs + `,` + chatTools + `,"tool_choice":{"type":"function","function":{"name":"nope"}}}`, `"nope"`},
		{"required without tools", "/v1/chat/completions", `{` + msgs + `,"tool_choice":"required"}`, "at least one function"},
		{"unknown choice", "/v1/chat/completions", `{` + msgs + `,` + chatTools + `,"tool_choice":"sometimes"}`, "sometimes"},
		{"a function choice without a name", "/v1/chat/completions", `{` + msgs + `,` + chatTools + `,"tool_choice":{"type":"function"}}`, "name"},
		{"a tool without a name", "/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function","function":{"parameters":{}}}]}`, "tools[0].function.name is required"},
		{"a tool without a function", "/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function"}]}`, "tools[0].function is required"},
		{"parameters not a schema", "/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]}`, "tools[0].function.parameters"},
		{"parameters no value satisfies", "/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"integer","minimum":2,"maximum":1}}}]}`, `function "f"`},
		{"tools not an array", "/v1/chat/completions", `{` + msgs + `,"tools":{}}`, "tools"},
		{"json_schema without a schema", "/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x"}}}`, "response_format.json_schema.schema is required"},
		{"json_schema without json_schema", "/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema"}}`, "response_format.json_schema is required"},
		{"unknown format", "/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"yaml"}}`, "yaml"},
		{"a format that admits nothing", "/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"$ref":"#/$defs/none"}}}}`, "does not resolve"},
		{"responses: a tool without a name", "/v1/responses", `{"input":"x","tools":[{"type":"function","parameters":{}}]}`, "tools[0].name is required"},
		{"responses: choice names a missing function", "/v1/responses", `{"input":"x",` + flatTools + `,"tool_choice":{"type":"function","name":"nope"}}`, `"nope"`},
		{"responses: text.format without a schema", "/v1/responses", `{"input":"x","text":{"format":{"type":"json_schema","name":"x"}}}`, "text.format.schema is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := ts.post(context.Background(), t, tc.path, tc.body)
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			var e apiError
			if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(b, &e) != nil || e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, tc.want) {
				t.Fatalf("%d %s, want 400 saying %q", resp.StatusCode, b, tc.want)
			}
		})
	}
}
