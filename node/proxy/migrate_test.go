package proxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

func ev(data string) []byte { return []byte("data: " + data + "\n\n") }

func named(name, data string) []byte { return []byte("event: " + name + "\ndata: " + data + "\n\n") }

// feed passes events through m as the tap does and returns what the client
// gets.
func feed(m *migration, evs ...[]byte) string {
	var out strings.Builder
	for _, e := range evs {
		out.Write(m.event(e))
	}
	return out.String()
}

func TestMigration_ContinuationRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		api  streamAPI
		body string
		sent []string
		want map[string]string // member -> its JSON
		err  string
	}{
		{name: "chat", api: apiChat, body: `{"model":"m","messages":[{"role":"user","content":"q"}],"stream":true,"max_tokens":60,"seed":7,"temperature":0.5}`,
			sent: []string{"The", " quick"},
			want: map[string]string{"messages": `[{"role":"user","content":"q"},{"content":"The quick","role":"assistant"}]`,
				"max_tokens": "58", "seed": "7", "temperature": "0.5", "continue_final_message": "true", "add_generation_prompt": "false"}},
		{name: "chat, max_completion_tokens and llama-server's unbounded -1", api: apiChat,
			body: `{"model":"m","messages":[],"max_completion_tokens":3,"n_predict":-1}`, sent: []string{"a", "b", "c", "d"},
			want: map[string]string{"max_completion_tokens": "1", "n_predict": "-1"}},
		{name: "chat, nothing sent yet: the request as it was", api: apiChat, body: `{"model":"m","messages":[{"role":"user","content":"q"}]}`,
			want: map[string]string{"messages": `[{"role":"user","content":"q"}]`, "continue_final_message": ""}},
		{name: "completions", api: apiCompletions, body: `{"model":"m","prompt":"Once","max_tokens":10}`, sent: []string{" upon", " a"},
			want: map[string]string{"prompt": `"Once upon a"`, "max_tokens": "8"}},
		{name: "completions, a one-prompt list", api: apiCompletions, body: `{"model":"m","prompt":["Once"]}`, sent: []string{" upon"},
			want: map[string]string{"prompt": `"Once upon"`}},
		{name: "completions of token ids", api: apiCompletions, body: `{"model":"m","prompt":[1,2,3]}`, sent: []string{"x"}, err: "not one string"},
		{name: "responses, text input", api: apiResponses, body: `{"model":"m","input":"hi","max_output_tokens":5,"instructions":"be brief"}`, sent: []string{"Hel", "lo"},
			want: map[string]string{"input": `[{"content":"hi","role":"user"},{"content":[{"text":"Hello","type":"output_text"}],"role":"assistant","status":"in_progress","type":"message"}]`, "max_output_tokens": "3", "instructions": `"be brief"`}},
		{name: "responses, item input", api: apiResponses, body: `{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}]}`, sent: []string{"Hello"},
			want: map[string]string{"input": `[{"role":"user","content":[{"type":"input_text","text":"hi"}]},{"content":[{"text":"Hello","type":"output_text"}],"role":"assistant","status":"in_progress","type":"message"}]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &migration{api: tc.api, body: []byte(tc.body), maxBytes: 1 << 20}
			for _, s := range tc.sent {
				m.addText(s)
			}
			b, err := m.continuation()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			for k, want := range tc.want {
				if string(got[k]) != want {
					t.Errorf("%s = %s, want %s (request %s)", k, got[k], want, b)
				}
			}
		})
	}
}

func TestMigration_OneStreamForTheClient(t *testing.T) {
	m := &migration{api: apiChat, maxBytes: 1 << 20, left: 2}
	first := feed(m,
		ev(`{"id":"c1","created":100,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`),
		ev(`{"id":"c1","created":100,"model":"m","choices":[{"index":0,"delta":{"content":"The"}}]}`),
		ev(`{"id":"c1","created":100,"model":"m","choices":[{"index":0,"delta":{"content":" quick"}}]}`))
	if strings.Count(first, "data:") != 3 {
		t.Fatalf("the first answer's events changed: %q", first)
	}
	if m.text.String() != "The quick" || m.tokens != 2 || m.ended() {
		t.Fatalf("recorded %q, %d tokens, ended %v", m.text.String(), m.tokens, m.ended())
	}
	m.beginContinuation()
	out := feed(m,
		ev(`{"id":"c2","created":200,"model":"m2","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`),
		ev(`{"id":"c2","created":200,"model":"m2","choices":[{"index":0,"delta":{"role":"assistant","content":" brown"}}]}`),
		ev(`{"id":"c2","created":200,"model":"m2","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}`),
		ev(`{"id":"c2","created":200,"model":"m2","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}`),
		ev(`[DONE]`))
	evs := strings.Split(strings.TrimSuffix(out, "\n\n"), "\n\n")
	if len(evs) != 4 {
		t.Fatalf("client got %d events, want 4 (the role chunk dropped): %q", len(evs), out)
	}
	for _, e := range evs[:3] {
		var c struct {
			ID      string
			Created int64
			Model   string
			Choices []struct{ Delta map[string]any }
			Usage   *struct {
				Prompt     int `json:"prompt_tokens"`
				Completion int `json:"completion_tokens"`
				Total      int `json:"total_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(e, "data: ")), &c); err != nil {
			t.Fatal(err)
		}
		if c.ID != "c1" || c.Created != 100 || c.Model != "m" {
			t.Errorf("event %q: identity %s/%d/%s, want the first answer's", e, c.ID, c.Created, c.Model)
		}
		for _, ch := range c.Choices {
			if _, ok := ch.Delta["role"]; ok {
				t.Errorf("event %q repeats the role", e)
			}
		}
		if c.Usage != nil && (c.Usage.Prompt != 10 || c.Usage.Completion != 3 || c.Usage.Total != 13) {
			t.Errorf("usage %+v, want the continuation's prompt less the 2 tokens sent (10), and 3 completion tokens", *c.Usage)
		}
	}
	if evs[3] != "data: [DONE]" || !m.ended() || m.text.String() != "The quick brown" {
		t.Errorf("end %q, ended %v, text %q", evs[3], m.ended(), m.text.String())
	}
}

// A stream that broke off before its first event is answered by the
// continuation as it comes: the client has had no opening event.
func TestMigration_NothingSentYet(t *testing.T) {
	m := &migration{api: apiResponses, maxBytes: 1 << 20, left: 2}
	m.beginContinuation()
	created := named("response.created", `{"type":"response.created","sequence_number":0,"response":{"id":"resp_2"}}`)
	if out := feed(m, created); out != string(created) || m.respID != "resp_2" {
		t.Fatalf("client got %q (response id %q), want the opening event", out, m.respID)
	}
}

func TestMigration_WhatCannotBeContinued(t *testing.T) {
	for _, tc := range []struct {
		name string
		api  streamAPI
		evs  [][]byte
		why  string
	}{
		{"a tool call", apiChat, [][]byte{ev(`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"f"}}]}}]}`)}, "tool call"},
		{"reasoning", apiChat, [][]byte{ev(`{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}`)}, "reasoning"},
		{"several choices", apiCompletions, [][]byte{ev(`{"choices":[{"index":1,"text":"x"}]}`)}, "several choices"},
		{"too long", apiChat, [][]byte{ev(`{"choices":[{"index":0,"delta":{"content":"0123456789abcdef"}}]}`)}, "--migration-max-bytes"},
		{"not JSON", apiChat, [][]byte{ev(`{"choices":`)}, "not a JSON"},
		{"a function call item", apiResponses, [][]byte{named("response.output_item.added", `{"type":"response.output_item.added","item":{"id":"fc","type":"function_call"}}`)}, "function_call"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &migration{api: tc.api, maxBytes: 8, left: 2}
			if out := feed(m, tc.evs...); out != string(tc.evs[0]) {
				t.Errorf("the event changed: %q", out)
			}
			if !strings.Contains(m.why, tc.why) {
				t.Errorf("why %q, want it to say %q", m.why, tc.why)
			}
		})
	}
}

// An error event mid-stream is held back: the stream is continued, or it
// reaches the client as the end.
func TestMigration_ErrorEventBreaksTheAnswer(t *testing.T) {
	m := &migration{api: apiChat, maxBytes: 1 << 20, left: 2}
	e := ev(`{"error":{"message":"CUDA error","type":"server_error"}}`)
	if out := feed(m, ev(`{"id":"c","choices":[{"index":0,"delta":{"content":"a"}}]}`), e); strings.Contains(out, "CUDA") {
		t.Fatalf("the error event passed: %q", out)
	}
	if string(m.broke) != string(e) {
		t.Fatalf("broke %q", m.broke)
	}
}

func TestMigration_ResponsesStream(t *testing.T) {
	m := &migration{api: apiResponses, maxBytes: 1 << 20, left: 2}
	feed(m,
		named("response.created", `{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress"}}`),
		named("response.output_item.added", `{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"msg_1","type":"message"}}`),
		named("response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1","delta":"Hel"}`))
	m.beginContinuation()
	out := feed(m,
		named("response.created", `{"type":"response.created","sequence_number":0,"response":{"id":"resp_2"}}`),
		named("response.in_progress", `{"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_2"}}`),
		named("response.output_item.added", `{"type":"response.output_item.added","sequence_number":2,"item":{"id":"msg_2","type":"message"}}`),
		named("response.content_part.added", `{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_2"}`),
		named("response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_2","delta":"lo"}`),
		named("response.output_text.done", `{"type":"response.output_text.done","sequence_number":5,"item_id":"msg_2","text":"lo"}`),
		named("response.content_part.done", `{"type":"response.content_part.done","sequence_number":6,"item_id":"msg_2","part":{"type":"output_text","text":"lo"}}`),
		named("response.output_item.done", `{"type":"response.output_item.done","sequence_number":7,"item":{"id":"msg_2","type":"message","content":[{"type":"output_text","text":"lo"}]}}`),
		named("response.completed", `{"type":"response.completed","sequence_number":8,"response":{"id":"resp_2","output":[{"id":"msg_2","type":"message","content":[{"type":"output_text","text":"lo"}]}],"usage":{"input_tokens":9,"output_tokens":1,"total_tokens":10}}}`))
	for _, gone := range []string{"resp_2", "msg_2", "response.created", "response.in_progress", "output_item.added", "content_part.added"} {
		if strings.Contains(out, gone) {
			t.Errorf("client got %q: %s", gone, out)
		}
	}
	for _, want := range []string{`"sequence_number":3`, `"sequence_number":7`, `"text":"Hello"`, `"id":"resp_1"`, `"item_id":"msg_1"`,
		`"input_tokens":8`, `"output_tokens":2`, "event: response.completed\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("client did not get %s: %s", want, out)
		}
	}
	if strings.Count(out, `"text":"Hello"`) != 4 || !m.ended() {
		t.Errorf("want the whole text in the four done events, and the answer ended: %s", out)
	}
}

// BenchmarkEntryStream is what the entry node does per token of a stream it
// passes on: the usage tap alone (migration off), and the tap with the
// migration record (on, the default), one read per chunk as a worker
// flushes them. It
// reports the CPU time per token and the bytes kept for a 1000-token
// answer.
func BenchmarkEntryStream(b *testing.B) {
	const tokens = 1000
	chunk := func(i int) []byte {
		return []byte(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"qwen2.5-7b-instruct","system_fingerprint":"b4000","choices":[{"index":0,"delta":{"content":" word` +
			strconv.Itoa(i%10) + `"},"logprobs":null,"finish_reason":null}]}` + "\n\n")
	}
	chunks := make([][]byte, tokens)
	for i := range chunks {
		chunks[i] = chunk(i)
	}
	for _, migrate := range []bool{false, true} {
		name := "migration-off"
		if migrate {
			name = "migration-on"
		}
		b.Run(name, func(b *testing.B) {
			var kept int
			for b.Loop() {
				tap := tapFor("text/event-stream", 200, true)
				if migrate {
					tap.mig = &migration{api: apiChat, maxBytes: DefaultMigrationMaxBytes, left: DefaultMigrationLimit}
				}
				for _, c := range chunks {
					tap.feed(c)
				}
				tap.rest()
				if migrate {
					kept = tap.mig.text.Cap() + len(tap.mig.id) + len(tap.mig.created) + len(tap.mig.model)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/tokens, "ns/token")
			b.ReportMetric(float64(kept), "bytes-kept/1000-tokens")
		})
	}
}

// FuzzMigration: whatever a worker streams, in whatever pieces, the first
// answer passes through the migration record unchanged (only an error
// event is held back), a continuation never panics and comes out as whole
// events, and a continuation request, when one can be made, is JSON.
func FuzzMigration(f *testing.F) {
	for _, s := range []string{
		"data: {\"id\":\"c\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
		"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":3,\"item_id\":\"m\",\"delta\":\"x\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"x\"}]}],\"usage\":{\"input_tokens\":4,\"output_tokens\":5}}}\n\n",
		"data: {\"error\":{\"message\":\"boom\"}}\n\n",
		"data: {\"choices\":[{\"index\":0,\"text\":\"a\\u00e9\",\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":\"x\"}}\r\n\r\ndata: partial",
		": comment\n\n\n\ndata: {}\n",
	} {
		for api := range 3 {
			f.Add([]byte(s), uint8(7), uint8(api))
			f.Add([]byte(s), uint8(1), uint8(api))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, piece, api uint8) {
		bodies := []string{`{"model":"m","messages":[{"role":"user","content":"q"}],"max_tokens":9}`, `{"model":"m","prompt":"p","max_tokens":9}`, `{"model":"m","input":"i","max_output_tokens":9}`}
		n := int(piece%64) + 1
		run := func(cont bool) []byte {
			resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}}
			tap := newUsageTap(resp, false)
			tap.mig = &migration{api: streamAPI(api % 3), maxBytes: 1 << 10, left: 2, body: []byte(bodies[api%3])}
			if cont {
				tap.mig.addText("pre")
				tap.mig.beginContinuation()
			}
			var out []byte
			for i := 0; i < len(body); i += n {
				out = append(out, tap.feed(body[i:min(i+n, len(body))])...)
			}
			out = append(out, tap.rest()...)
			if b, err := tap.mig.continuation(); err == nil && !json.Valid(b) {
				t.Fatalf("continuation %q is not JSON", b)
			}
			if tap.mig != nil && tap.mig.broke != nil {
				out = append(out, tap.mig.broke...)
			}
			return out
		}
		if out := run(false); !bytes.Equal(out, body) && !bytes.Contains(body, []byte(`"error"`)) && !bytes.Contains(body, []byte(`error`)) {
			t.Fatalf("the first answer changed: %q from %q", out, body)
		}
		run(true)
	})
}
