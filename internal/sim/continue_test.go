package sim

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestContinues_FindsWhereTheAnswerGoesOn(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prefix   string
		wantK    int
		wantRest string
		wantOK   bool
	}{
		{"empty: from the start", "", 0, "The", true},
		{"a token boundary", "The quick", 2, " brown", true},
		{"inside a token", "The qu", 1, "ick", true},
		{"inside the first token", "Th", 0, "e", true},
		{"just the space of the next token", "The quick ", 2, "brown", true},
		{"the end of a cycle", Text(9), 9, " The", true},
		{"inside the token across cycles", Text(9) + " ", 9, "The", true},
		{"a later cycle", Text(32) + " o", 32, "ver", true},
		{"not the answer", "Hello", 0, "", false},
		{"the answer, then something else", "The quick red", 0, "", false},
		{"the answer's words, not at its start", " quick brown", 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, rest, ok := Continues(tc.prefix)
			if k != tc.wantK || rest != tc.wantRest || ok != tc.wantOK {
				t.Errorf("Continues(%q) = %d, %q, %v; want %d, %q, %v", tc.prefix, k, rest, ok, tc.wantK, tc.wantRest, tc.wantOK)
			}
		})
	}
	// Every cut of a long answer: the prefix, rest and the tokens after
	// k are the answer again.
	const n = 100
	full := Text(n)
	for b := range len(full) + 1 {
		k, rest, ok := Continues(full[:b])
		if !ok || rest == "" || !strings.HasSuffix(Token(k), rest) || full[:b]+rest != Text(k+1) {
			t.Fatalf("Continues(Text(%d)[:%d]) = %d, %q, %v", n, b, k, rest, ok)
		}
	}
}

func TestAnswerSuffix_LongestSuffixThatStartsTheAnswer(t *testing.T) {
	for _, tc := range []struct {
		name, s, want string
	}{
		{"empty", "", ""},
		{"no answer in it", "Once upon a time", ""},
		{"the whole prompt", "The quick bro", "The quick bro"},
		{"after other text", "Say it: The quick brown fox ju", "The quick brown fox ju"},
		{"the longest, not the last start", "x: The quick brown fox jumps over the lazy dog. The qu", "The quick brown fox jumps over the lazy dog. The qu"},
		{"a later start where an earlier one breaks off", "The quick red. The quick", "The quick"},
		{"a single byte", "Rule T", "T"},
		{"the answer's words, not its start", "a quick brown", ""},
		{"answer text followed by more", "The quick brown cat", ""},
		{"many cycles", "> " + Text(200), Text(200)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := answerSuffix(tc.s); got != tc.want {
				t.Errorf("answerSuffix(%q) = %q, want %q", tc.s, got, tc.want)
			}
		})
	}
}

// chatContinuation is a chat request whose last message is the assistant's
// prefix, with extra fields.
func chatContinuation(t *testing.T, prefix string, extra map[string]any) string {
	t.Helper()
	body := map[string]any{"model": "m", "messages": []any{
		map[string]any{"role": "user", "content": "hi"},
		map[string]any{"role": "assistant", "content": prefix},
	}}
	for k, v := range extra {
		body[k] = v
	}
	return mustJSON(t, body)
}

func TestChat_ContinuesATrailingAssistantMessage(t *testing.T) {
	const maxTokens = 12
	ts := startSim(t, Config{Model: "m", MaxTokens: maxTokens})
	vllm := map[string]any{"continue_final_message": true, "add_generation_prompt": false}
	parts := `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"The quick "},{"type":"text","text":"br"}]}]}`
	for _, tc := range []struct {
		name       string
		body       string
		prefix     string // the assistant's text, for the prompt's count
		want       string
		wantTokens int
		wantFinish string
	}{
		{"a token boundary", chatContinuation(t, Text(3), nil), Text(3), Text(maxTokens)[len(Text(3)):], maxTokens - 3, "stop"},
		{"inside a token: its rest counts as a token", chatContinuation(t, "The qu", nil), "The qu", Text(maxTokens)[len("The qu"):], maxTokens - 1, "stop"},
		{"content parts", parts, "The quick br", Text(maxTokens)[len("The quick br"):], maxTokens - 2, "stop"},
		{"vLLM's continue_final_message", chatContinuation(t, "The quick", vllm), "The quick", Text(maxTokens)[len("The quick"):], maxTokens - 2, "stop"},
		{"continue_final_message alone", chatContinuation(t, "The quick", map[string]any{"continue_final_message": true}), "The quick",
			Text(maxTokens)[len("The quick"):], maxTokens - 2, "stop"},
		{"max_tokens counts new tokens", chatContinuation(t, "The qu", map[string]any{"max_tokens": 3}), "The qu", "ick brown fox", 3, "length"},
		{"max_tokens past the unlimited answer's end", chatContinuation(t, Text(10), map[string]any{"max_tokens": 5}), Text(10),
			Text(15)[len(Text(10)):], 5, "length"},
		{"empty: a fresh answer", chatContinuation(t, "", nil), "", Text(maxTokens), maxTokens, "stop"},
		{"not the answer: a fresh answer", chatContinuation(t, "Hello there", nil), "Hello there", Text(maxTokens), maxTokens, "stop"},
		{"the prefix holds the whole answer", chatContinuation(t, Text(maxTokens), nil), Text(maxTokens), "", 0, "stop"},
		{"the prefix holds more than the answer", chatContinuation(t, Text(14)+" o", nil), Text(14) + " o", "", 0, "stop"},
		{"a new turn asked for: add_generation_prompt", chatContinuation(t, "The quick", map[string]any{"add_generation_prompt": true}),
			"The quick", Text(maxTokens), maxTokens, "stop"},
		{"a new turn asked for: continue_final_message false", chatContinuation(t, "The quick", map[string]any{"continue_final_message": false}),
			"The quick", Text(maxTokens), maxTokens, "stop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got chunk
			ts.postJSON(t, "/v1/chat/completions", tc.body, &got)
			if len(got.Choices) != 1 || got.Choices[0].Message == nil {
				t.Fatalf("choices = %+v, want one with a message", got.Choices)
			}
			c := got.Choices[0]
			if c.Message.Role != "assistant" || c.Message.Content != tc.want {
				t.Errorf("message = %+v, want the assistant saying %q", c.Message, tc.want)
			}
			if c.FinishReason == nil || *c.FinishReason != tc.wantFinish {
				t.Errorf("finish_reason = %v, want %q", c.FinishReason, tc.wantFinish)
			}
			wantPrompt := (3 + 1) + (3 + countTokens(tc.prefix))
			if u := got.Usage; u == nil || u.PromptTokens != wantPrompt || u.CompletionTokens != tc.wantTokens || u.TotalTokens != wantPrompt+tc.wantTokens {
				t.Errorf("usage = %+v, want %d prompt, %d completion tokens", u, wantPrompt, tc.wantTokens)
			}
		})
	}
}

func TestChat_ContinueFinalMessageWithGenerationPromptIs400(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	resp := ts.post(context.Background(), t, "/v1/chat/completions",
		chatContinuation(t, "The", map[string]any{"continue_final_message": true, "add_generation_prompt": true}))
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e apiError
	if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(b, &e) != nil ||
		e.Error.Message != "continue_final_message and add_generation_prompt cannot both be true" || e.Error.Type != "invalid_request_error" {
		t.Errorf("%d %s, want vLLM's 400", resp.StatusCode, b)
	}
}

func TestCompletions_ContinueTheAnswerThePromptEndsWith(t *testing.T) {
	const maxTokens = 12
	ts := startSim(t, Config{Model: "m", MaxTokens: maxTokens})
	for _, tc := range []struct {
		name       string
		prompt     any
		want       string
		wantTokens int
		wantFinish string
	}{
		{"the prompt is the answer so far", "The quick brown", Text(maxTokens)[len(Text(3)):], maxTokens - 3, "stop"},
		{"the longest suffix", "Q: go on. A: The quick brown fox jumps over the lazy dog. The qu",
			Text(maxTokens)[len(Text(11))-3:], maxTokens - 10, "stop"},
		{"a single string in a list", []string{"Story: The quick"}, Text(maxTokens)[len(Text(2)):], maxTokens - 2, "stop"},
		{"no answer in the prompt", "Once upon a time", Text(maxTokens), maxTokens, "stop"},
		{"token ids are not continued", []int{1, 2, 3}, Text(maxTokens), maxTokens, "stop"},
		{"two prompts are not continued", []string{"x", "The quick"}, Text(maxTokens), maxTokens, "stop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got chunk
			ts.postJSON(t, "/v1/completions", mustJSON(t, map[string]any{"prompt": tc.prompt}), &got)
			if len(got.Choices) != 1 || got.Choices[0].Text == nil || *got.Choices[0].Text != tc.want {
				t.Fatalf("choices = %+v, want %q", got.Choices, tc.want)
			}
			if f := got.Choices[0].FinishReason; f == nil || *f != tc.wantFinish {
				t.Errorf("finish_reason = %v, want %q", f, tc.wantFinish)
			}
			if u := got.Usage; u == nil || u.CompletionTokens != tc.wantTokens {
				t.Errorf("usage = %+v, want %d completion tokens", u, tc.wantTokens)
			}
		})
	}
	var got chunk
	ts.postJSON(t, "/v1/completions", `{"prompt":"The quick brown fox ju","max_tokens":2}`, &got)
	if c := got.Choices[0]; *c.Text != "mps over" || *c.FinishReason != "length" || got.Usage.PromptTokens != countTokens("The quick brown fox ju") || got.Usage.CompletionTokens != 2 {
		t.Errorf("with max_tokens: %q %s %+v", *c.Text, *c.FinishReason, got.Usage)
	}
}

// responsesContinuation is a Responses request whose input ends with the
// assistant's prefix as an output_text message.
func responsesContinuation(t *testing.T, prefix string, stream bool, partType string) string {
	t.Helper()
	return mustJSON(t, map[string]any{"model": "m", "stream": stream, "input": []any{
		map[string]any{"role": "user", "content": "hi"},
		map[string]any{"type": "message", "role": "assistant", "content": []any{map[string]any{"type": partType, "text": prefix}}},
	}})
}

func TestResponses_ContinuesATrailingAssistantMessage(t *testing.T) {
	const maxTokens = 12
	ts := startSim(t, Config{Model: "m", MaxTokens: maxTokens})
	for _, tc := range []struct {
		name       string
		body       func(stream bool) string
		prefix     string
		want       string
		wantTokens int
		wantStatus string
	}{
		{"output_text, inside a token", func(s bool) string { return responsesContinuation(t, "The quick bro", s, "output_text") },
			"The quick bro", Text(maxTokens)[len("The quick bro"):], maxTokens - 2, "completed"},
		{"input_text, a token boundary", func(s bool) string { return responsesContinuation(t, Text(4), s, "input_text") },
			Text(4), Text(maxTokens)[len(Text(4)):], maxTokens - 4, "completed"},
		{"a string content", func(s bool) string {
			return mustJSON(t, map[string]any{"stream": s, "input": []any{map[string]any{"role": "user", "content": "hi"}, map[string]any{"role": "assistant", "content": "The"}}})
		}, "The", Text(maxTokens)[3:], maxTokens - 1, "completed"},
		{"max_output_tokens counts new tokens", func(s bool) string {
			return mustJSON(t, map[string]any{"stream": s, "max_output_tokens": 2, "input": []any{map[string]any{"role": "user", "content": "hi"}, map[string]any{"role": "assistant", "content": "The"}}})
		}, "The", " quick brown", 2, "incomplete"},
		{"a refusal is not continued", func(s bool) string { return responsesContinuation(t, "The", s, "refusal") },
			"The", Text(maxTokens), maxTokens, "completed"},
		{"not the answer", func(s bool) string { return responsesContinuation(t, "Sure!", s, "output_text") },
			"Sure!", Text(maxTokens), maxTokens, "completed"},
		{"the prefix holds the whole answer", func(s bool) string { return responsesContinuation(t, Text(maxTokens), s, "output_text") },
			Text(maxTokens), "", 0, "completed"},
	} {
		wantInput := (3 + 1) + (3 + countTokens(tc.prefix))
		check := func(t *testing.T, r response) {
			t.Helper()
			text, err := r.text()
			if err != nil {
				t.Fatal(err)
			}
			if text != tc.want || r.Status != tc.wantStatus {
				t.Errorf("text %q, status %s; want %q, %s", text, r.Status, tc.want, tc.wantStatus)
			}
			if u := r.Usage; u == nil || u.InputTokens != wantInput || u.OutputTokens != tc.wantTokens || u.TotalTokens != wantInput+tc.wantTokens {
				t.Errorf("usage %+v, want %d in, %d out", r.Usage, wantInput, tc.wantTokens)
			}
		}
		t.Run(tc.name+": whole", func(t *testing.T) {
			var r response
			ts.postJSON(t, "/v1/responses", tc.body(false), &r)
			check(t, r)
		})
		t.Run(tc.name+": streamed", func(t *testing.T) {
			resp := ts.post(context.Background(), t, "/v1/responses", tc.body(true))
			defer resp.Body.Close()
			var deltas strings.Builder
			var last response
			for _, e := range readNamedEvents(t, resp.Body) {
				var ev struct {
					Delta    string          `json:"delta"`
					Response json.RawMessage `json:"response"`
				}
				if err := json.Unmarshal([]byte(e.data), &ev); err != nil {
					t.Fatal(err)
				}
				switch e.name {
				case "response.output_text.delta":
					deltas.WriteString(ev.Delta)
				case "response.completed", "response.incomplete":
					if err := json.Unmarshal(ev.Response, &last); err != nil {
						t.Fatal(err)
					}
				}
			}
			if deltas.String() != tc.want {
				t.Errorf("deltas %q, want %q", deltas.String(), tc.want)
			}
			check(t, last)
		})
	}
}

// streamed sends a streaming request and returns the text of its deltas,
// its finish reason and the number of text events.
func streamed(t *testing.T, ts *testSim, path, body string) (text, finish string, tokens int) {
	t.Helper()
	resp := ts.post(context.Background(), t, path, body)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	if path == "/v1/responses" {
		for _, e := range readNamedEvents(t, resp.Body) {
			var ev struct {
				Delta    string `json:"delta"`
				Response struct {
					Status string `json:"status"`
				} `json:"response"`
			}
			if err := json.Unmarshal([]byte(e.data), &ev); err != nil {
				t.Fatal(err)
			}
			switch e.name {
			case "response.output_text.delta":
				text += ev.Delta
				tokens++
			case "response.completed", "response.incomplete":
				finish = ev.Response.Status
			}
		}
		return text, finish, tokens
	}
	events := readSSE(t, resp.Body)
	for i, ev := range events[:len(events)-1] {
		var c chunk
		if err := json.Unmarshal([]byte(ev), &c); err != nil || len(c.Choices) != 1 {
			t.Fatalf("event %d: %s (%v)", i, ev, err)
		}
		ch := c.Choices[0]
		if i == 0 && path == "/v1/chat/completions" {
			if ch.Delta == nil || ch.Delta.Role == nil || *ch.Delta.Role != "assistant" || *ch.Delta.Content != "" {
				t.Fatalf("first event %s, want the role", ev)
			}
			continue
		}
		if ch.FinishReason != nil {
			finish = *ch.FinishReason
			continue
		}
		if ch.Text != nil {
			text += *ch.Text
		} else if ch.Delta != nil && ch.Delta.Content != nil {
			text += *ch.Delta.Content
		}
		tokens++
	}
	return text, finish, tokens
}

// TestContinuation_StreamedEqualsTheUninterruptedAnswer cuts an answer at
// every byte, as a worker dying mid-stream would, and continues it on
// another worker: prefix and continuation are the uninterrupted answer, to
// the byte, on every endpoint.
func TestContinuation_StreamedEqualsTheUninterruptedAnswer(t *testing.T) {
	const n = 11
	full := Text(n)
	ts := startSim(t, Config{Model: "m", MaxTokens: n})
	for cut := range len(full) + 1 {
		prefix := full[:cut]
		k, _, _ := Continues(prefix)
		wantTokens := max(n-k, 0)
		for _, tc := range []struct {
			path, body, wantFinish string
		}{
			{"/v1/chat/completions", chatContinuation(t, prefix, map[string]any{"stream": true}), "stop"},
			{"/v1/chat/completions", chatContinuation(t, prefix, map[string]any{"stream": true, "continue_final_message": true, "add_generation_prompt": false}), "stop"},
			{"/v1/completions", mustJSON(t, map[string]any{"stream": true, "prompt": "Go on: " + prefix}), "stop"},
			{"/v1/responses", responsesContinuation(t, prefix, true, "output_text"), "completed"},
		} {
			text, finish, tokens := streamed(t, ts, tc.path, tc.body)
			if prefix+text != full || finish != tc.wantFinish || tokens != wantTokens {
				t.Errorf("%s cut at %d (%q): continued with %q in %d tokens, %s; want %q in %d, %s",
					tc.path, cut, prefix, text, tokens, finish, full[cut:], wantTokens, tc.wantFinish)
			}
		}
	}
	// With a limit: the new tokens are the uninterrupted answer's next ones.
	for cut := range len(full) + 1 {
		k, _, _ := Continues(full[:cut])
		text, finish, tokens := streamed(t, ts, "/v1/chat/completions", chatContinuation(t, full[:cut], map[string]any{"stream": true, "max_tokens": 3}))
		if full[:cut]+text != Text(k+3) || finish != "length" || tokens != 3 {
			t.Errorf("cut at %d, max_tokens 3: %q, %s, %d tokens", cut, text, finish, tokens)
		}
	}
}

// TestPrefixCache_ContinuedAnswerIsOneMessage: a conversation's next turn
// after a migrated answer holds that answer as one assistant message, and
// finds it cached on the worker that finished it.
func TestPrefixCache_ContinuedAnswerIsOneMessage(t *testing.T) {
	system := strings.Repeat("You are a helpful assistant who answers briefly. ", 8)
	const total = 40
	answer := Text(total)
	s, err := New(Config{Model: "m", PrefixCache: true, MaxTokens: total})
	if err != nil {
		t.Fatal(err)
	}
	first, err := decodeChat([]byte(chatBodyOf(t, 0, "system", system, "user", "hi", "assistant", answer[:37])))
	if err != nil {
		t.Fatal(err)
	}
	if first.Cont == nil {
		t.Fatal("not decoded as a continuation")
	}
	if _, n := serveDecoded(s, first); first.text(n) != answer[37:] {
		t.Fatalf("continued with %q, want %q", first.text(n), answer[37:])
	}
	second, err := decodeChat([]byte(chatBodyOf(t, 0, "system", system, "user", "hi", "assistant", answer, "user", "more")))
	if err != nil {
		t.Fatal(err)
	}
	cached, _ := s.prefill(&second)
	if want := (second.PromptTokens - (3 + 1)) / blockTokens * blockTokens; cached != want {
		t.Errorf("next turn: %d of %d tokens cached, want %d", cached, second.PromptTokens, want)
	}
}
