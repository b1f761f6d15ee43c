package sim

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// chunk is the union of the stream events' fields the tests read.
type chunk struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	Created           int64  `json:"created"`
	Model             string `json:"model"`
	SystemFingerprint string `json:"system_fingerprint"`
	Choices           []struct {
		Index   int `json:"index"`
		Message *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Text         *string `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

func TestText_CyclesThroughTheSentence(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string
	}{
		{0, ""},
		{1, "The"},
		{3, "The quick brown"},
		{11, "The quick brown fox jumps over the lazy dog. The quick"},
	} {
		if got := Text(tc.n); got != tc.want {
			t.Errorf("Text(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestChat_NonStreamingAnswersInOpenAIShape(t *testing.T) {
	ts := startSim(t, Config{Model: "llama-3.2-1b", MaxTokens: 5})
	for _, tc := range []struct {
		name       string
		body       string
		wantModel  string
		wantTokens int
		wantFinish string
	}{
		{"no limit: the configured length, stopped by itself",
			`{"model":"llama-3.2-1b","messages":[{"role":"user","content":"hello there"}]}`, "llama-3.2-1b", 5, "stop"},
		{"max_tokens reached",
			`{"model":"llama-3.2-1b","messages":[{"role":"user","content":"hi"}],"max_tokens":3}`, "llama-3.2-1b", 3, "length"},
		{"max_completion_tokens wins over max_tokens",
			`{"model":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"max_completion_tokens":7}`, "x", 7, "length"},
		{"llama-server's n_predict",
			`{"messages":[{"role":"user","content":"hi"}],"n_predict":2}`, "llama-3.2-1b", 2, "length"},
		{"-1 means no limit, as llama-server's web UI sends",
			`{"model":"alias","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}`, "alias", 5, "stop"},
		{"a limit beyond the cap is capped",
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100000}`, "m", MaxTokensCap, "stop"},
		{"content parts, a null content, stream false",
			`{"model":"m","stream":false,"messages":[{"role":"system","content":[{"type":"text","text":"be brief"}]},{"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":"go"}],"max_tokens":1}`, "m", 1, "length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got chunk
			ts.postJSON(t, "/v1/chat/completions", tc.body, &got)
			if got.Object != "chat.completion" || !strings.HasPrefix(got.ID, "chatcmpl-") || got.Created == 0 || got.Model != tc.wantModel {
				t.Errorf("head = %q %q %d %q, want chat.completion, chatcmpl-..., a time, model %q", got.Object, got.ID, got.Created, got.Model, tc.wantModel)
			}
			if len(got.Choices) != 1 || got.Choices[0].Message == nil {
				t.Fatalf("choices = %+v, want one with a message", got.Choices)
			}
			c := got.Choices[0]
			if c.Message.Role != "assistant" || c.Message.Content != Text(tc.wantTokens) {
				t.Errorf("message = %+v, want the assistant saying %d tokens", c.Message, tc.wantTokens)
			}
			if c.FinishReason == nil || *c.FinishReason != tc.wantFinish {
				t.Errorf("finish_reason = %v, want %q", c.FinishReason, tc.wantFinish)
			}
			u := got.Usage
			if u == nil || u.PromptTokens < 1 || u.CompletionTokens != tc.wantTokens || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
				t.Errorf("usage = %+v, want %d completion tokens and a consistent total", u, tc.wantTokens)
			}
		})
	}
}

func TestChat_StreamingSendsChunksInOrderThenDone(t *testing.T) {
	ts := startSim(t, Config{Model: "m", MaxTokens: 4})
	for _, tc := range []struct {
		name       string
		body       string
		wantTokens int
		wantFinish string
		wantUsage  bool
	}{
		{"max_tokens", `{"model":"alias","stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`, 3, "length", false},
		{"no limit", `{"model":"alias","stream":true,"messages":[{"role":"user","content":"hi"}]}`, 4, "stop", false},
		{"include_usage", `{"model":"alias","stream":true,"stream_options":{"include_usage":true},"max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`, 2, "length", true},
		{"include_usage false", `{"model":"alias","stream":true,"stream_options":{"include_usage":false},"max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`, 2, "length", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := ts.post(context.Background(), t, "/v1/chat/completions", tc.body)
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			events := readSSE(t, resp.Body)
			// role, one per token, finish, [usage], [DONE]
			want := 1 + tc.wantTokens + 1 + 1
			if tc.wantUsage {
				want++
			}
			if len(events) != want {
				t.Fatalf("%d events, want %d:\n%s", len(events), want, strings.Join(events, "\n"))
			}
			var id string
			var text strings.Builder
			for i, ev := range events[:len(events)-1] {
				var c chunk
				if err := json.Unmarshal([]byte(ev), &c); err != nil {
					t.Fatalf("event %d: %v: %s", i, err, ev)
				}
				if c.Object != "chat.completion.chunk" || c.Model != "alias" || c.ID == "" {
					t.Errorf("event %d: object %q model %q id %q", i, c.Object, c.Model, c.ID)
				}
				if id == "" {
					id = c.ID
				} else if c.ID != id {
					t.Errorf("event %d: id %q, want %q as every chunk", i, c.ID, id)
				}
				switch {
				case i == 0:
					if len(c.Choices) != 1 || c.Choices[0].Delta == nil || c.Choices[0].Delta.Role == nil || *c.Choices[0].Delta.Role != "assistant" || c.Choices[0].FinishReason != nil {
						t.Errorf("first event %s, want the assistant role and no finish", ev)
					}
				case i <= tc.wantTokens:
					if len(c.Choices) != 1 || c.Choices[0].Delta == nil || c.Choices[0].Delta.Content == nil || c.Choices[0].FinishReason != nil {
						t.Fatalf("token event %d: %s", i, ev)
					}
					text.WriteString(*c.Choices[0].Delta.Content)
				case i == tc.wantTokens+1:
					if len(c.Choices) != 1 || c.Choices[0].FinishReason == nil || *c.Choices[0].FinishReason != tc.wantFinish || c.Choices[0].Delta == nil || c.Choices[0].Delta.Content != nil {
						t.Errorf("finish event %s, want an empty delta and finish_reason %q", ev, tc.wantFinish)
					}
					if c.Usage != nil {
						t.Errorf("finish event carries usage: %s", ev)
					}
				default:
					if len(c.Choices) != 0 || c.Usage == nil || c.Usage.CompletionTokens != tc.wantTokens || c.Usage.TotalTokens != c.Usage.PromptTokens+tc.wantTokens {
						t.Errorf("usage event %s, want no choices and %d completion tokens", ev, tc.wantTokens)
					}
				}
			}
			if text.String() != Text(tc.wantTokens) {
				t.Errorf("streamed %q, want %q", text.String(), Text(tc.wantTokens))
			}
		})
	}
}

func TestCompletions_WholeAndStreamed(t *testing.T) {
	ts := startSim(t, Config{Model: "m"})
	var whole chunk
	ts.postJSON(t, "/v1/completions", `{"model":"m","prompt":"Once upon a time","max_tokens":4}`, &whole)
	if whole.Object != "text_completion" || !strings.HasPrefix(whole.ID, "cmpl-") || len(whole.Choices) != 1 ||
		whole.Choices[0].Text == nil || *whole.Choices[0].Text != Text(4) || *whole.Choices[0].FinishReason != "length" {
		t.Errorf("completion = %+v", whole)
	}
	if whole.Usage == nil || whole.Usage.PromptTokens != 4 || whole.Usage.CompletionTokens != 4 {
		t.Errorf("usage = %+v, want 4 prompt tokens (16 bytes) and 4 completion tokens", whole.Usage)
	}
	for _, prompt := range []string{`["a","bb"]`, `[1,2,3]`, `[[1,2],[3]]`, `""`} {
		var c chunk
		ts.postJSON(t, "/v1/completions", `{"prompt":`+prompt+`,"max_tokens":1}`, &c)
		if len(c.Choices) != 1 || *c.Choices[0].Text != "The" || c.Model != "m" {
			t.Errorf("prompt %s: %+v", prompt, c)
		}
	}

	resp := ts.post(context.Background(), t, "/v1/completions", `{"prompt":"x","max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}`)
	defer resp.Body.Close()
	events := readSSE(t, resp.Body)
	if len(events) != 3+1+1+1 {
		t.Fatalf("%d events, want 3 tokens, finish, usage, [DONE]:\n%s", len(events), strings.Join(events, "\n"))
	}
	var text strings.Builder
	for i, ev := range events[:3] {
		var c chunk
		if err := json.Unmarshal([]byte(ev), &c); err != nil || c.Object != "text_completion" || len(c.Choices) != 1 || c.Choices[0].Text == nil || c.Choices[0].FinishReason != nil {
			t.Fatalf("token event %d: %s (%v)", i, ev, err)
		}
		text.WriteString(*c.Choices[0].Text)
	}
	if text.String() != Text(3) {
		t.Errorf("streamed %q", text.String())
	}
	var fin, use chunk
	_ = json.Unmarshal([]byte(events[3]), &fin)
	_ = json.Unmarshal([]byte(events[4]), &use)
	if len(fin.Choices) != 1 || fin.Choices[0].FinishReason == nil || *fin.Choices[0].FinishReason != "length" {
		t.Errorf("finish event %s", events[3])
	}
	if len(use.Choices) != 0 || use.Usage == nil || use.Usage.CompletionTokens != 3 {
		t.Errorf("usage event %s", events[4])
	}
}

func TestChat_PacingSpacesTokens(t *testing.T) {
	// Timers never fire early, so lower bounds are safe to assert; upper
	// bounds would flake on a loaded machine and are left to benchmarks.
	const ttft, rate, n = 30 * time.Millisecond, 500.0, 11 // 10 gaps of 2 ms
	ts := startSim(t, Config{TTFT: ttft, TokensPerSecond: rate})
	for _, stream := range []bool{false, true} {
		start := time.Now()
		body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":11,"stream":` + map[bool]string{false: "false", true: "true"}[stream] + `}`
		resp := ts.post(context.Background(), t, "/v1/chat/completions", body)
		var firstToken time.Duration
		if stream {
			r := newSSEReader(resp.Body)
			for i := 0; ; i++ {
				data, err := r.next()
				if err != nil {
					t.Fatalf("stream: %v", err)
				}
				if i == 1 {
					firstToken = time.Since(start)
				}
				if data == "[DONE]" {
					break
				}
			}
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
		}
		resp.Body.Close()
		took := time.Since(start)
		if min := ttft + (n-1)*time.Second/rate; took < min {
			t.Errorf("stream=%v: %d tokens took %v, less than TTFT + %d gaps = %v", stream, n, took, n-1, min)
		}
		if stream && firstToken < ttft {
			t.Errorf("first token after %v, before the %v TTFT", firstToken, ttft)
		}
	}
}
