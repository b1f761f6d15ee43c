package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestE2E_LangChainClient runs LangChain.js (with node) against `rbee demo`,
// whose workers are simulated: withStructuredOutput with a zod schema (by
// response_format's JSON schema and by a forced function call) and
// bindTools, invoked and streamed, through chat completions and the
// Responses API; zod must accept every document, and after a tool's result
// the answer must be text. It shows that the simulator's tool calls and
// structured output pass through rbee's proxy as a real client reads them.
// CI installs node and the packages; elsewhere the test skips, saying why,
// unless RBEE_REQUIRE_NODE is set.
func TestE2E_LangChainClient(t *testing.T) {
	runClientAgainstDemo(t, "langchain-client", "@langchain/openai")
}

// TestE2E_DemoBannerToolCall: the tool call the demo's banner suggests,
// sent as printed to the demo, is answered with a call of the function
// whose arguments hold what its schema requires.
func TestE2E_DemoBannerToolCall(t *testing.T) {
	addr := startDemo(t)
	var banner strings.Builder
	printDemoBanner(&banner, demoBanner{models: []string{"llama-3.2-1b", "qwen2.5-0.5b"}, entry: addr, pids: map[string]int{},
		cold: demoCold{model: "phi-3-mini"}, rbee: "rbee"})
	var body string
	for _, line := range strings.Split(banner.String(), "\n") {
		if strings.Contains(line, `"tools"`) {
			_, rest, _ := strings.Cut(line, "-d '")
			body, _, _ = strings.Cut(rest, "'")
		}
	}
	if body == "" {
		t.Fatalf("the banner shows no tool call:\n%s", banner.String())
	}
	var c struct {
		Choices []struct {
			Message struct {
				ToolCalls []struct {
					Function struct{ Name, Arguments string }
				} `json:"tool_calls"`
			}
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := postJSONTo(addr, "", "/v1/chat/completions", body, &c); err != nil {
		t.Fatal(err)
	}
	var args struct{ City *string }
	if len(c.Choices) != 1 || c.Choices[0].FinishReason != "tool_calls" || len(c.Choices[0].Message.ToolCalls) != 1 ||
		c.Choices[0].Message.ToolCalls[0].Function.Name != "get_weather" ||
		json.Unmarshal([]byte(c.Choices[0].Message.ToolCalls[0].Function.Arguments), &args) != nil || args.City == nil {
		t.Fatalf("the banner's tool call %s was answered %+v, want a call of get_weather with a city", body, c)
	}
}

// longSchema makes a document of some 150 tokens: at migTPS it streams
// for 3 s, and a kill after migKillAt tokens lands mid-way.
const longSchema = `{"type":"object","properties":{"items":{"type":"array","minItems":12,"maxItems":12,"items":{"type":"object",` +
	`"properties":{"name":{"type":"string"},"n":{"type":"integer"}},"required":["name","n"]}}},"required":["items"]}`

// TestMigration_StructuredOutputAndToolCalls: a worker dies mid-answer. A
// structured answer (a JSON document) goes on from another worker byte for
// byte, so the client's document is whole and parses, in chat completions
// and the Responses API; a tool call is not continued (nothing continues a
// call's arguments), and the client sees its stream break, as before
// migration, rather than a call whose arguments are spliced.
func TestMigration_StructuredOutputAndToolCalls(t *testing.T) {
	t.Parallel()
	mc := newMigCluster(t, 2, 2)
	token := mc.key.HTTPToken()
	killServing := func() {
		h, w := mc.serving(t)
		mc.hives[h].sims[w].signal(t, syscall.SIGKILL, 10*time.Second)
	}
	for _, api := range []migAPI{
		{"chat", "/v1/chat/completions", func(p string) string {
			return fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":%q}],"response_format":{"type":"json_schema","json_schema":{"name":"list","schema":%s}}`, p, longSchema)
		}},
		{"responses", "/v1/responses", func(p string) string {
			return fmt.Sprintf(`{"model":"m","input":%q,"text":{"format":{"type":"json_schema","name":"list","schema":%s}}`, p, longSchema)
		}},
	} {
		// What the uninterrupted answer is: the same request, whole.
		var whole struct {
			Choices []struct{ Message struct{ Content string } }
			Output  []struct{ Content []struct{ Text string } }
		}
		if err := postJSONTo(mc.e.httpAddr, token, api.path, api.body("list things")+`}`, &whole); err != nil {
			t.Fatal(err)
		}
		want := ""
		if len(whole.Choices) == 1 {
			want = whole.Choices[0].Message.Content
		} else if len(whole.Output) == 1 && len(whole.Output[0].Content) == 1 {
			want = whole.Output[0].Content[0].Text
		}
		if !json.Valid([]byte(want)) || len(want) < 200 {
			t.Fatalf("%s: the whole answer %q, want a long JSON document", api.name, want)
		}
		s := streamURL(t, "http://"+mc.e.httpAddr+api.path, token, api, api.body("list things")+`,"stream":true}`, migKillAt, killServing)
		if s.err != nil || s.text != want {
			t.Fatalf("%s: streamed %q (%v), want the document unbroken %q", api.name, s.text, s.err, want)
		}
		t.Logf("%s: worker SIGKILLed after %d tokens of a %d-byte document; the client's longest wait between tokens: %v",
			api.name, migKillAt, len(want), s.maxGap().Round(time.Millisecond))
	}

	// A streamed call: pieces of its arguments, then the worker dies.
	body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"call it"}],` +
		`"tools":[{"type":"function","function":{"name":"f","parameters":` + longSchema + `}}]}`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+mc.e.httpAddr+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	var pieces int
	var killed bool
	var rest strings.Builder
	var broke error
	for broke == nil {
		var line string
		line, broke = br.ReadString('\n')
		if killed {
			rest.WriteString(line)
		}
		if strings.Contains(line, `"tool_calls"`) {
			pieces++
			if pieces == migKillAt {
				killServing()
				killed = true
			}
		}
	}
	if !killed {
		t.Fatalf("the call's stream ended after %d pieces, before the kill: %v", pieces, broke)
	}
	// A piece already on its way when the kill landed may still come,
	// with "finish_reason":null like every piece; an end would name one.
	if broke == io.EOF || strings.Contains(rest.String(), "[DONE]") || strings.Contains(rest.String(), `"finish_reason":"`) {
		t.Fatalf("a call whose worker died ended as if whole (%v):\n%s", broke, rest.String())
	}
	t.Logf("the call's stream broke for the client after %d pieces (%v), as it should", pieces, broke)
}

// postJSONTo posts body to addr's path with token and decodes a 200 answer.
func postJSONTo(addr, token, path, body string, out any) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	return json.Unmarshal(b, out)
}
