package engines

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// continueTemplate is the README's template for tiny, written so that a
// trailing assistant message is left open: its text is the end of the
// prompt and no new "<|assistant|>" turn follows, so the model continues
// it. Ollama has no prefill handling of its own for templates (no
// continue_final_message; server/prompt.go just executes the template over
// the messages); the template alone decides.
const continueTemplate = `{{- $cont := false }}{{- range $i, $m := .Messages }}<|{{ .Role }}|>{{ .Content }}` +
	`{{ if and (eq (len (slice $.Messages $i)) 1) (eq .Role "assistant") }}{{ $cont = true }}{{ else }}
{{ end }}{{ end }}{{ if not $cont }}<|assistant|>{{ end }}`

// TestOllamaContinuesTrailingAssistant: with temperature 0, an answer cut
// after K tokens and continued by a fresh request (the messages plus an
// assistant message holding the K tokens' text, max_tokens reduced by K) is
// the uninterrupted answer byte for byte, through /v1/chat/completions and
// /v1/responses on a model whose template leaves a trailing assistant
// message open, and through /v1/completions (prompt + the text) on a model
// whose template is the prompt itself.
//
// The cut points are ones where the text re-tokenizes to the very tokens
// generated (each prompt grows by K tokens, checked): tiny generates word
// pieces such as " bee" that its tokenizer, merging pairs only, never
// produces from text, and a cut after one of those continues differently.
func TestOllamaContinuesTrailingAssistant(t *testing.T) {
	t.Parallel()
	bin, tiny := Find(t)
	base := startOllama(t, bin)
	createTiny(t, base, tiny, "tinyc", continueTemplate)
	createTiny(t, base, tiny, "tinyp", "") // Ollama's default template, {{ .Prompt }}

	const user, n = "beepr hive", 48
	msgs := []map[string]any{{"role": "user", "content": user}}

	// What the template renders, by Ollama's own _debug_render_only.
	for _, tc := range []struct {
		msgs []map[string]any
		want string
	}{
		{msgs, "<|user|>" + user + "\n<|assistant|>"},
		{append(msgs[:1:1], map[string]any{"role": "assistant", "content": "?qf"}), "<|user|>" + user + "\n<|assistant|>?qf"},
	} {
		var r struct {
			Debug struct {
				Rendered string `json:"rendered_template"`
			} `json:"_debug_info"`
		}
		postJSON(t, base+"/v1/chat/completions", map[string]any{"model": "tinyc", "messages": tc.msgs, "_debug_render_only": true}, &r)
		if r.Debug.Rendered != tc.want {
			t.Fatalf("rendered %q, want %q", r.Debug.Rendered, tc.want)
		}
	}

	// The uninterrupted answer, streamed as a client sees it: one token a
	// chunk here (Ollama joins tokens into one chunk only while they may
	// be the start of a stop sequence or an incomplete UTF-8 character).
	chunks, usage := streamChat(t, base, map[string]any{
		"model": "tinyc", "messages": msgs, "temperature": 0, "seed": 42, "max_tokens": n,
		"stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	full := strings.Join(chunks, "")
	if len(chunks) != n || usage.CompletionTokens != n {
		t.Fatalf("answer %q in %d chunks, %d tokens; want %d of each", full, len(chunks), usage.CompletionTokens, n)
	}
	promptTokens := usage.PromptTokens

	// Form by form, so that Ollama switches models once (it keeps one
	// loaded at a time here, and a reload takes a while).
	cuts := []int{1, 2, 5, 17, 30, 46}
	for _, form := range []string{"chat", "responses", "completions"} {
		for _, k := range cuts {
			prefix := strings.Join(chunks[:k], "")
			var cont, finish string
			var u usageCounts
			switch form {
			case "chat":
				var r struct {
					Choices []struct {
						Message      struct{ Content string } `json:"message"`
						FinishReason string                   `json:"finish_reason"`
					} `json:"choices"`
					Usage usageCounts `json:"usage"`
				}
				postJSON(t, base+"/v1/chat/completions", map[string]any{
					"model": "tinyc", "temperature": 0, "seed": 42, "max_tokens": n - k,
					"messages": append(msgs[:1:1], map[string]any{"role": "assistant", "content": prefix}),
				}, &r)
				cont, finish, u = r.Choices[0].Message.Content, r.Choices[0].FinishReason, r.Usage
			case "responses":
				// Ollama 0.17.4's Responses API takes no seed, and reports a
				// cut by max_output_tokens as "completed".
				var r struct {
					Output []struct {
						Content []struct{ Text string } `json:"content"`
					} `json:"output"`
					Usage struct {
						In  int `json:"input_tokens"`
						Out int `json:"output_tokens"`
					} `json:"usage"`
				}
				postJSON(t, base+"/v1/responses", map[string]any{
					"model": "tinyc", "temperature": 0, "max_output_tokens": n - k,
					"input": []map[string]any{
						{"type": "message", "role": "user", "content": user},
						{"type": "message", "role": "assistant", "content": []map[string]any{{"type": "output_text", "text": prefix}}},
					},
				}, &r)
				if len(r.Output) != 1 || len(r.Output[0].Content) != 1 {
					t.Fatalf("responses, K=%d: output %+v", k, r.Output)
				}
				cont, finish, u = r.Output[0].Content[0].Text, "length", usageCounts{r.Usage.In, r.Usage.Out}
			case "completions":
				// Ollama applies the model's template to a /v1/completions
				// prompt too; tinyp's is the prompt itself.
				var r struct {
					Choices []struct {
						Text         string `json:"text"`
						FinishReason string `json:"finish_reason"`
					} `json:"choices"`
					Usage usageCounts `json:"usage"`
				}
				postJSON(t, base+"/v1/completions", map[string]any{
					"model": "tinyp", "temperature": 0, "seed": 42, "max_tokens": n - k,
					"prompt": "<|user|>" + user + "\n<|assistant|>" + prefix,
				}, &r)
				cont, finish, u = r.Choices[0].Text, r.Choices[0].FinishReason, r.Usage
			}
			if u.PromptTokens != promptTokens+k {
				t.Fatalf("%s, K=%d: prompt of %d tokens, want %d: %q does not re-tokenize to the %d tokens generated",
					form, k, u.PromptTokens, promptTokens+k, prefix, k)
			}
			if prefix+cont != full || u.CompletionTokens != n-k || finish != "length" {
				t.Fatalf("%s, K=%d: continued %q (%d tokens, %s) after %q; want %q (%d tokens, length)",
					form, k, cont, u.CompletionTokens, finish, prefix, full[len(prefix):], n-k)
			}
		}
	}
	t.Logf("answer %q continued byte for byte after 1, 2, 5, 17, 30 and 46 tokens by chat, responses and completions", full)
}

type usageCounts struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// startOllama serves Ollama on a free port with a fresh model store, and
// stops it (and its runners) when the test ends. It returns the base URL.
func startOllama(tb testing.TB, bin string) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	host := "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(), "OLLAMA_HOST="+host, "OLLAMA_MODELS="+tb.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // and its runners
		_ = cmd.Wait()
	})
	base := "http://" + host
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if resp, err := http.Get(base + "/api/version"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Since(start) > 30*time.Second {
			tb.Fatal("ollama serve did not answer within 30 s")
		}
	}
}

// createTiny uploads tiny.gguf (once per store) and creates a model of it
// named name with template (Ollama's default, {{ .Prompt }}, where empty),
// the stop "<|user|>" and one thread: with a thread a core, a few runners at
// once (tests in parallel) slowed this test from under 2 s to 50-90 s on two
// cores.
func createTiny(tb testing.TB, base, tiny, name, template string) {
	tb.Helper()
	digest := Digest(tb, tiny)
	if resp, err := http.Head(base + "/api/blobs/" + digest); err != nil {
		tb.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusOK {
		f, err := os.Open(tiny)
		if err != nil {
			tb.Fatal(err)
		}
		defer f.Close()
		resp, err := http.Post(base+"/api/blobs/"+digest, "application/octet-stream", f)
		if err != nil {
			tb.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			tb.Fatalf("upload of tiny.gguf: %s", resp.Status)
		}
	}
	req := map[string]any{
		"model": name, "files": map[string]string{"tiny.gguf": digest},
		"parameters": map[string]any{"stop": []string{"<|user|>"}, "num_thread": 1}, "stream": false,
	}
	if template != "" {
		req["template"] = template
	}
	postJSON(tb, base+"/api/create", req, nil)
}

// postJSON posts body and decodes a 2xx answer into out (when not nil).
func postJSON(tb testing.TB, url string, body, out any) {
	tb.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode/100 != 2 {
		tb.Fatalf("POST %s: %s: %s", url, resp.Status, got)
	}
	if out != nil {
		if err := json.Unmarshal(got, out); err != nil {
			tb.Fatalf("POST %s: %v: %s", url, err, got)
		}
	}
}

// streamChat posts a streamed chat completion and returns the content of
// each chunk that carries some, and the usage of the last.
func streamChat(tb testing.TB, base string, body map[string]any) ([]string, usageCounts) {
	tb.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		got, _ := io.ReadAll(resp.Body)
		tb.Fatalf("stream: %s: %s", resp.Status, got)
	}
	var chunks []string
	var usage usageCounts
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
			Usage *usageCounts `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			tb.Fatalf("chunk %s: %v", data, err)
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != "" {
				chunks = append(chunks, ch.Delta.Content)
			}
		}
		if c.Usage != nil {
			usage = *c.Usage
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return chunks, usage
}
