package proxy

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/rbee/rbee/node/api"
)

func TestInjectIncludeUsage(t *testing.T) {
	for _, tc := range []struct {
		name, path, body string
		strip            bool
		want             string // "" : the body unchanged
	}{
		{"absent", api.PathChat, `{"model":"m","stream":true}`, true, `{"stream_options":{"include_usage":true},"model":"m","stream":true}`},
		{"absent, blanks", api.PathCompletions, "{ \"model\":\"m\", \"stream\":true }", true, "{\"stream_options\":{\"include_usage\":true}, \"model\":\"m\", \"stream\":true }"},
		{"null", api.PathChat, `{"model":"m","stream":true,"stream_options":null}`, true, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`},
		{"false, other options kept", api.PathChat, `{"model":"m","stream_options":{"include_usage":false,"x":1},"stream":true}`, true,
			`{"model":"m","stream_options":{"include_usage":true,"x":1},"stream":true}`},
		{"empty options", api.PathChat, `{"model":"m","stream":true,"stream_options":{}}`, true, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`},
		{"client asked", api.PathChat, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, false, ""},
		{"wrong type is the worker's", api.PathChat, `{"model":"m","stream":true,"stream_options":3}`, false, ""},
		{"not a stream", api.PathChat, `{"model":"m","stream":false}`, false, ""},
		{"stream not true", api.PathChat, `{"model":"m","stream":"yes"}`, false, ""},
		{"responses streams report usage anyway", api.PathResponses, `{"model":"m","stream":true}`, false, ""},
		{"embeddings", api.PathEmbeddings, `{"model":"m","input":"x"}`, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			head, err := readHead("application/json", []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			out, strip := askUsage(tc.path, &head, []byte(tc.body))
			if strip != tc.strip {
				t.Errorf("strip = %v, want %v", strip, tc.strip)
			}
			want := tc.want
			if want == "" {
				want = tc.body
			}
			if string(out) != want {
				t.Errorf("body\n got %s\nwant %s", out, want)
			}
			if !jsontext.Value(out).IsValid() {
				t.Errorf("body %s is not valid JSON", out)
			}
		})
	}
}

// chatStream is a chat completion stream as llama-server and the simulator
// send it, with the usage chunk include_usage adds.
const chatStream = `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}

data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}

data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

`

const usageChunk = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\r\n\r\n"

const done = "data: [DONE]\n\n"

const responsesStream = `event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","usage":null}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":1,"delta":"the \"usage\": 99"}

event: response.completed
data: {"type":"response.completed","sequence_number":2,"response":{"id":"resp_1","status":"completed","usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":0},"output_tokens":5,"total_tokens":12}}}

`

// pass runs body through a tap in pieces of n bytes and returns what the
// client got.
func pass(t *usageTap, body string, n int) string {
	var out bytes.Buffer
	for i := 0; i < len(body); i += n {
		out.Write(t.feed([]byte(body[i:min(i+n, len(body))])))
	}
	out.Write(t.rest())
	return out.String()
}

func tapFor(contentType string, status int, strip bool) *usageTap {
	return newUsageTap(&http.Response{StatusCode: status, Header: http.Header{"Content-Type": {contentType}}}, strip)
}

func TestUsageTap(t *testing.T) {
	bigJSON := `{"object":"list","data":[{"embedding":[` + strings.Repeat("0.125,", 40000) + `0]}],"model":"m","usage":{"prompt_tokens":40,"total_tokens":40}}`
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		strip             bool
		want              string // what the client gets
		prompt, compl     int64
		found             bool
	}{
		{"chat stream, usage added by rbee, stripped", "text/event-stream", chatStream + usageChunk + done, 200, true, chatStream + done, 12, 3, true},
		{"chat stream, usage asked by the client, kept", "text/event-stream; charset=utf-8", chatStream + usageChunk + done, 200, false, chatStream + usageChunk + done, 12, 3, true},
		{"stream ending in the usage chunk without a blank line", "text/event-stream", chatStream + strings.TrimRight(usageChunk, "\r\n"), 200, true, chatStream, 12, 3, true},
		{"chat stream without usage", "text/event-stream", chatStream + done, 200, true, chatStream + done, 0, 0, false},
		{"responses stream", "text/event-stream", responsesStream, 200, false, responsesStream, 7, 5, true},
		{"malformed usage chunk passes", "text/event-stream", chatStream + "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"x\"}}\n\n" + done, 200, true,
			chatStream + "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"x\"}}\n\n" + done, 0, 0, false},
		{"usage of the wrong shape passes", "text/event-stream", "data: {\"choices\":[],\"usage\":[1]}\n\n", 200, true, "data: {\"choices\":[],\"usage\":[1]}\n\n", 0, 0, false},
		{"a chunk with choices and usage is the client's", "text/event-stream", "data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n", 200, true,
			"data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n", 1, 2, true},
		{"over-long event ends parsing", "text/event-stream", "data: \"" + strings.Repeat("x", maxHeldEvent+10) + "\"\n\n" + usageChunk, 200, true,
			"data: \"" + strings.Repeat("x", maxHeldEvent+10) + "\"\n\n" + usageChunk, 0, 0, false},
		{"chat JSON", "application/json", `{"id":"c","choices":[{"message":{"content":"\"usage\":{}"}}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}`, 200, false, "", 9, 4, true},
		{"responses JSON", "application/json", `{"id":"resp_1","output":[],"usage":{"input_tokens":3,"output_tokens":2}}`, 200, false, "", 3, 2, true},
		{"large embeddings JSON", "application/json", bigJSON, 200, false, "", 40, 0, true},
		{"JSON without usage", "application/json", `{"id":"c","choices":[]}`, 200, false, "", 0, 0, false},
		{"broken JSON", "application/json", `{"usage":{"prompt_tokens":1`, 200, false, "", 0, 0, false},
		{"error answer", "application/json", `{"error":{"message":"no"},"usage":{"prompt_tokens":5}}`, 400, false, "", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want == "" {
				want = tc.body
			}
			for _, n := range []int{1, 7, 4096, len(tc.body)} {
				tap := tapFor(tc.ctype, tc.status, tc.strip)
				got := pass(tap, tc.body, n)
				if got != want {
					t.Fatalf("pieces of %d: client got\n%q\nwant\n%q", n, trunc(got), trunc(want))
				}
				if tap.found != tc.found || tap.prompt != tc.prompt || tap.completion != tc.compl {
					t.Fatalf("pieces of %d: usage found=%v %d+%d, want found=%v %d+%d", n, tap.found, tap.prompt, tap.completion, tc.found, tc.prompt, tc.compl)
				}
			}
		})
	}
}

func trunc(s string) string {
	if len(s) > 400 {
		return s[:200] + "..." + s[len(s)-200:]
	}
	return s
}

// TestUsageTap_HoldsOnlyTheEventInProgress: each complete event goes to the
// client in the read that completed it.
func TestUsageTap_HoldsOnlyTheEventInProgress(t *testing.T) {
	tap := tapFor("text/event-stream", 200, true)
	first := "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
	if got := string(tap.feed([]byte(first + "data: {\"cho"))); got != first {
		t.Fatalf("got %q, want the first event", got)
	}
	if got := string(tap.feed([]byte("ices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"))); got != "" {
		t.Fatalf("got %q, want the usage chunk dropped", got)
	}
}

// BenchmarkUsageTap_Stream: one 200-token answer a tap, read as the
// simulator sends it through a loaded entry node (32 KiB reads), with the
// buffers passed from each tap to the next (pooled) and without (fresh, the
// build before): the allocations of each answer's first read are the
// difference.
func BenchmarkUsageTap_Stream(b *testing.B) {
	chunk := `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}` + "\n\n"
	body := []byte(strings.Repeat(chunk, 200) + usageChunk)
	for _, pooled := range []bool{true, false} {
		name := map[bool]string{true: "pooled", false: "fresh"}[pooled]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				tap := tapFor("text/event-stream", 200, true)
				for rest := body; len(rest) > 0; {
					n := min(len(rest), 32<<10)
					tap.feed(rest[:n])
					rest = rest[n:]
				}
				tap.rest()
				if pooled {
					tap.free()
				}
			}
		})
	}
}
