package sim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// chatBodyOf is a chat completion request with messages given as role,
// content pairs; maxTokens 0 sets no limit.
func chatBodyOf(t *testing.T, maxTokens int, pairs ...string) string {
	t.Helper()
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	var msgs []msg
	for i := 0; i+1 < len(pairs); i += 2 {
		msgs = append(msgs, msg{pairs[i], pairs[i+1]})
	}
	body := map[string]any{"model": "m", "messages": msgs}
	if maxTokens > 0 {
		body["max_tokens"] = maxTokens
	}
	return mustJSON(t, body)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// serveDecoded runs a decoded request through the prefix cache as a handler
// does once it has a slot, without HTTP or waiting: it returns the tokens
// found cached and the answer's length.
func serveDecoded(s *Simulator, g genRequest) (cached, n int) {
	cached, _ = s.prefill(&g)
	n, _ = s.budget(g)
	s.answered(&g, cached, n)
	return cached, n
}

func decodeResponsesGen(body []byte) (genRequest, error) {
	r, err := decodeResponses(body)
	return r.genRequest, err
}

func TestPromptHash_CountsTokensAsUsageDoes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		decode func([]byte) (genRequest, error)
		body   string
		want   int
	}{
		{"chat: three framing tokens a message, four bytes a token", decodeChat,
			`{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello"},{"role":"assistant","content":null}]}`,
			(3 + 2) + (3 + 2) + 3},
		{"completion: a string", decodeCompletion, `{"prompt":"hello world"}`, 3},
		{"completion: token ids", decodeCompletion, `{"prompt":[1,2,3,4,5]}`, 5},
		{"completion: strings and ids", decodeCompletion, `{"prompt":["abcd","e",[7,8]]}`, 1 + 1 + 2},
		{"responses: instructions and items", decodeResponsesGen,
			`{"instructions":"abcdefgh","input":[{"role":"user","content":"hey"},{"type":"function_call_output","output":"x"}]}`,
			2 + (3 + 1) + countTokens(`{"type":"function_call_output","output":"x"}`)},
		{"responses: a string", decodeResponsesGen, `{"input":"abcde"}`, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := tc.decode([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if g.PromptTokens != tc.want || g.Prompt.n != tc.want {
				t.Errorf("prompt tokens %d, hashed %d, want %d", g.PromptTokens, g.Prompt.n, tc.want)
			}
			if len(g.Prompt.blocks) != tc.want/blockTokens {
				t.Errorf("%d blocks, want %d", len(g.Prompt.blocks), tc.want/blockTokens)
			}
		})
	}
}

func TestPrefixCache_NextTurnFindsTheConversationCached(t *testing.T) {
	system := strings.Repeat("You are a helpful assistant who answers briefly. ", 8)
	question := "What is the capital of France, and why is it that one?"
	const answerTokens = 40
	answer := Text(answerTokens)
	completion := strings.Repeat("Once upon a time, ", 20) + "there" // 365 bytes: its last token is short

	for _, tc := range []struct {
		name   string
		decode func([]byte) (genRequest, error)
		first  string
		second string
		// want is the second prompt's cached tokens, given the first's
		// token count.
		want func(first int) int
	}{
		{"chat: prompt, answer, new question",
			decodeChat,
			chatBodyOf(t, answerTokens, "system", system, "user", question),
			chatBodyOf(t, answerTokens, "system", system, "user", question, "assistant", answer, "user", "And of Italy?"),
			func(first int) int { return (first + 3 + countTokens(answer)) / blockTokens * blockTokens }},
		{"chat: the same prompt again",
			decodeChat,
			chatBodyOf(t, answerTokens, "system", system, "user", question),
			chatBodyOf(t, answerTokens, "system", system, "user", question),
			func(first int) int { return first / blockTokens * blockTokens }},
		{"chat: an unrelated prompt",
			decodeChat,
			chatBodyOf(t, answerTokens, "system", system, "user", question),
			chatBodyOf(t, answerTokens, "system", "You are a pirate. "+system, "user", question),
			func(int) int { return 0 }},
		{"chat: a prompt shorter than a block is never cached",
			decodeChat,
			chatBodyOf(t, answerTokens, "user", "hi"),
			chatBodyOf(t, answerTokens, "user", "hi"),
			func(int) int { return 0 }},
		{"completion: the text goes on after the answer",
			decodeCompletion,
			mustJSON(t, map[string]any{"prompt": completion, "max_tokens": answerTokens}),
			mustJSON(t, map[string]any{"prompt": completion + answer + " The end.", "max_tokens": answerTokens}),
			// The prompt's short last token and the answer's first
			// bytes are one token: everything up to the last full token
			// of prompt+answer matches.
			func(int) int { return len(completion+answer) / 4 / blockTokens * blockTokens }},
		{"completion: token ids, the same again",
			decodeCompletion,
			`{"max_tokens":40,"prompt":[` + strings.Repeat("42,", 100) + `7]}`,
			`{"max_tokens":40,"prompt":[` + strings.Repeat("42,", 100) + `7,8,9]}`,
			func(first int) int { return first / blockTokens * blockTokens }},
		{"responses: input items with the answer as an output_text message",
			decodeResponsesGen,
			mustJSON(t, map[string]any{"instructions": system, "max_output_tokens": answerTokens,
				"input": []any{map[string]any{"role": "user", "content": question}}}),
			mustJSON(t, map[string]any{"instructions": system, "max_output_tokens": answerTokens,
				"input": []any{
					map[string]any{"role": "user", "content": question},
					map[string]any{"type": "message", "role": "assistant", "content": []any{map[string]any{"type": "output_text", "text": answer}}},
					map[string]any{"role": "user", "content": "And of Italy?"},
				}}),
			func(first int) int { return (first + 3 + countTokens(answer)) / blockTokens * blockTokens }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Config{Model: "m", PrefixCache: true})
			if err != nil {
				t.Fatal(err)
			}
			first, err := tc.decode([]byte(tc.first))
			if err != nil {
				t.Fatal(err)
			}
			second, err := tc.decode([]byte(tc.second))
			if err != nil {
				t.Fatal(err)
			}
			if cached, n := serveDecoded(s, first); cached != 0 || n != answerTokens {
				t.Fatalf("first prompt: %d cached, %d generated; want none cached, %d generated", cached, n, answerTokens)
			}
			cached, _ := serveDecoded(s, second)
			if want := tc.want(first.PromptTokens); cached != want {
				t.Errorf("second prompt (%d tokens): %d cached, want %d", second.PromptTokens, cached, want)
			}
			if cached > 0 && second.PromptTokens-cached > second.PromptTokens/4 {
				t.Errorf("second prompt: %d of %d tokens computed, want most cached", second.PromptTokens-cached, second.PromptTokens)
			}
		})
	}
}

// blocksOf is k made-up block hashes of prompt p.
func blocksOf(p uint64, k int) []uint64 {
	b := make([]uint64, k)
	for i := range b {
		b[i] = p<<32 | uint64(i)
	}
	return b
}

func TestPrefixCache_EvictsLeastRecentlyUsedAtCapacity(t *testing.T) {
	a, b, c := blocksOf(1, 2), blocksOf(2, 2), blocksOf(3, 2)
	long := blocksOf(4, 6)
	for _, tc := range []struct {
		name string
		run  func(pc *prefixCache)
		// want is the cached tokens of a, b, c and long afterwards.
		want [4]int
	}{
		{"within capacity all stay", func(pc *prefixCache) {
			pc.insert(a)
			pc.insert(b)
		}, [4]int{32, 32, 0, 0}},
		{"the oldest goes first", func(pc *prefixCache) {
			pc.insert(a)
			pc.insert(b)
			pc.insert(c)
		}, [4]int{0, 32, 32, 0}},
		{"a lookup counts as a use", func(pc *prefixCache) {
			pc.insert(a)
			pc.insert(b)
			pc.lookup(a)
			pc.insert(c)
		}, [4]int{32, 0, 32, 0}},
		{"a prompt's last blocks go before its first", func(pc *prefixCache) {
			pc.insert(a)
			pc.insert(blocksOf(2, 3))
		}, [4]int{16, 32, 0, 0}},
		{"a prompt longer than the cache keeps its start", func(pc *prefixCache) {
			pc.insert(long)
		}, [4]int{0, 0, 0, 4 * blockTokens}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := newPrefixCache(4 * blockTokens)
			tc.run(pc)
			if n := pc.lru.Len(); n > 4 || n != len(pc.index) {
				t.Fatalf("%d blocks listed, %d indexed; want the same, at most 4", n, len(pc.index))
			}
			var got [4]int
			for i, bl := range [][]uint64{a, b, c, long} {
				got[i] = pc.lookup(bl)
			}
			if got != tc.want {
				t.Errorf("cached tokens of a, b, c, long = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestConfig_TTFTGrowsWithUncachedTokens(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      Config
		computed int
		want     time.Duration
	}{
		{"off: TTFT alone", Config{TTFT: 50 * time.Millisecond, PrefillPerToken: time.Millisecond}, 1000, 50 * time.Millisecond},
		{"on: TTFT plus prefill", Config{PrefixCache: true, TTFT: 50 * time.Millisecond, PrefillPerToken: time.Millisecond}, 1000, 1050 * time.Millisecond},
		{"on, all cached", Config{PrefixCache: true, TTFT: 50 * time.Millisecond, PrefillPerToken: time.Millisecond}, 0, 50 * time.Millisecond},
		{"on, capped", Config{PrefixCache: true, TTFT: time.Hour, PrefillPerToken: maxPrefillPerToken}, 1 << 30, maxTTFT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cfg.ttft(tc.computed); got != tc.want {
				t.Errorf("ttft(%d) = %v, want %v", tc.computed, got, tc.want)
			}
		})
	}
}

func TestPrefixCache_OffChangesNothing(t *testing.T) {
	s, err := New(Config{Model: "m", TTFT: 7 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	body := chatBodyOf(t, 4, "system", strings.Repeat("long system prompt ", 50), "user", "hi")
	for range 2 {
		g, err := decodeChat([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if cached, ttft := s.prefill(&g); cached != 0 || ttft != 7*time.Millisecond {
			t.Fatalf("prefill = %d cached, ttft %v; want 0 and the plain TTFT", cached, ttft)
		}
		s.answered(&g, 0, 4)
	}

	ts := startSim(t, Config{Model: "m"})
	var got map[string]any
	ts.postJSON(t, "/v1/chat/completions", body, &got)
	ts.postJSON(t, "/v1/chat/completions", body, &got)
	u, _ := got["usage"].(map[string]any)
	if _, ok := u["prompt_tokens_details"]; ok || u == nil {
		t.Errorf("usage %v: want no prompt_tokens_details with the cache off", u)
	}
	p := int64(u["prompt_tokens"].(float64))
	ts.statsAre(t, Stats{Served: 2, PromptTokens: 2 * p, CompletionTokens: 2 * 4, PromptTokensComputed: 2 * p})
}

func TestPrefixCache_StatsAddUp(t *testing.T) {
	ts := startSim(t, Config{Model: "m", PrefixCache: true, PrefillPerToken: time.Nanosecond, MaxTokens: 20})
	system := strings.Repeat("Answer in French. ", 30)
	type chatAnswer struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage struct {
			PromptTokens        int `json:"prompt_tokens"`
			CompletionTokens    int `json:"completion_tokens"`
			PromptTokensDetails *struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	var first, second chatAnswer
	ts.postJSON(t, "/v1/chat/completions", chatBodyOf(t, 0, "system", system, "user", "Hello?"), &first)
	ts.postJSON(t, "/v1/chat/completions",
		chatBodyOf(t, 0, "system", system, "user", "Hello?", "assistant", first.Choices[0].Message.Content, "user", "Again?"), &second)
	var emb struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	ts.postJSON(t, "/v1/embeddings", `{"input":"some text to embed"}`, &emb)

	if d := first.Usage.PromptTokensDetails; d == nil || d.CachedTokens != 0 {
		t.Errorf("first turn's prompt_tokens_details %+v, want 0 cached", d)
	}
	d := second.Usage.PromptTokensDetails
	if d == nil || d.CachedTokens <= second.Usage.PromptTokens/2 {
		t.Fatalf("second turn's prompt_tokens_details %+v of %d prompt tokens, want most cached", d, second.Usage.PromptTokens)
	}
	prompt := first.Usage.PromptTokens + second.Usage.PromptTokens + emb.Usage.PromptTokens
	ts.statsAre(t, Stats{Served: 3,
		PromptTokens: int64(prompt), CompletionTokens: int64(first.Usage.CompletionTokens + second.Usage.CompletionTokens),
		PromptTokensCached: int64(d.CachedTokens), PromptTokensComputed: int64(prompt - d.CachedTokens)})

	var raw map[string]int64
	ts.getJSON(t, "/rbee/sim/stats", &raw)
	for _, k := range []string{"prompt_tokens", "completion_tokens", "prompt_tokens_cached", "prompt_tokens_computed", "served"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("GET /rbee/sim/stats %v: no %q", raw, k)
		}
	}
	if raw["prompt_tokens_cached"]+raw["prompt_tokens_computed"] != raw["prompt_tokens"] {
		t.Errorf("GET /rbee/sim/stats %v: cached and computed do not add up to prompt_tokens", raw)
	}
}

// TestPrefixCache_FollowUpTurnStartsSooner is the end-to-end effect, on
// the wall clock with wide margins: the first turn processes its whole
// prompt (4000 tokens at 100µs: 400ms at least, timers never fire early),
// the next almost none of it.
func TestPrefixCache_FollowUpTurnStartsSooner(t *testing.T) {
	ts := startSim(t, Config{Model: "m", PrefixCache: true, PrefillPerToken: 100 * time.Microsecond, MaxTokens: 1})
	system := strings.Repeat("abcd", 4000)
	timed := func(body string) time.Duration {
		start := time.Now()
		var v map[string]any
		ts.postJSON(t, "/v1/chat/completions", body, &v)
		return time.Since(start)
	}
	first := timed(chatBodyOf(t, 0, "system", system, "user", "one"))
	second := timed(chatBodyOf(t, 0, "system", system, "user", "one", "assistant", Text(1), "user", "two"))
	if first < 400*time.Millisecond {
		t.Errorf("first turn took %v, want at least 400ms of prefill", first)
	}
	if second > first/2 {
		t.Errorf("second turn took %v after a first of %v: want it far quicker, its prompt cached", second, first)
	}
}

func TestPrefixCache_ConfigDefaultsAndBounds(t *testing.T) {
	s, err := New(Config{Model: "m", PrefixCache: true})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Config(); c.PrefillPerToken != DefaultPrefillPerToken || c.PrefixCacheTokens != DefaultPrefixCacheTokens {
		t.Errorf("defaults: prefill %v, cache %d tokens; want %v, %d", c.PrefillPerToken, c.PrefixCacheTokens, DefaultPrefillPerToken, DefaultPrefixCacheTokens)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"negative prefill", Config{PrefixCache: true, PrefillPerToken: -time.Millisecond}, "prefill per token"},
		{"prefill beyond a second a token", Config{PrefixCache: true, PrefillPerToken: 2 * time.Second}, "prefill per token"},
		{"a cache smaller than a block", Config{PrefixCache: true, PrefixCacheTokens: blockTokens - 1}, "prefix cache tokens"},
		{"a negative cache", Config{PrefixCacheTokens: -1}, "prefix cache tokens"},
		{"a huge cache", Config{PrefixCache: true, PrefixCacheTokens: maxPrefixCacheTokens + 1}, "prefix cache tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Model = "m"
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error about %q", err, tc.want)
			}
		})
	}
}
