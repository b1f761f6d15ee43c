package proxy

import (
	"bytes"
	"net/http"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
)

// FuzzUsageTap: whatever a worker streams, in whatever pieces, the tap never
// panics, and without stripping passes every byte on unchanged and in order;
// with stripping it only ever removes bytes, never adds or reorders them.
func FuzzUsageTap(f *testing.F) {
	for _, s := range []string{
		"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
		"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":5}}}\n\n",
		"data: {\"usage\":{\"prompt_tokens\":\"x\"}}\r\n\r\ndata: partial",
		": comment\n\n\n\ndata: {}\n",
	} {
		f.Add([]byte(s), uint8(7), true, true)
		f.Add([]byte(s), uint8(1), true, false)
	}
	f.Add([]byte(`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}`), uint8(3), false, false)
	f.Fuzz(func(t *testing.T, body []byte, piece uint8, stream, strip bool) {
		resp := &http.Response{StatusCode: 200, Header: http.Header{}}
		if stream {
			resp.Header.Set("Content-Type", "text/event-stream")
		}
		tap := newUsageTap(resp, strip && stream)
		n := int(piece%64) + 1
		var out []byte
		for i := 0; i < len(body); i += n {
			out = append(out, tap.feed(body[i:min(i+n, len(body))])...)
		}
		out = append(out, tap.rest()...)
		if !(strip && stream) {
			if !bytes.Equal(out, body) {
				t.Fatalf("passed on %q, want %q unchanged", out, body)
			}
			return
		}
		// out must be a subsequence of body.
		j := 0
		for i := 0; i < len(body) && j < len(out); i++ {
			if body[i] == out[j] {
				j++
			}
		}
		if j != len(out) {
			t.Fatalf("stripping changed or added bytes: %q from %q", out, body)
		}
	})
}

// FuzzInjectIncludeUsage: a client's body either passes unchanged or, when it
// was a JSON object, comes out a JSON object that asks for usage.
func FuzzInjectIncludeUsage(f *testing.F) {
	for _, s := range []string{`{"model":"m","stream":true}`, `{}`, `{"stream_options":null}`, `{"stream_options":{"include_usage":false,"x":1}}`,
		`{"stream_options":{"include_usage":true}}`, `{"stream_options":7}`, `[1]`, `{"a":"\u00e9"}`, ` {"model":"m"} `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, changed := injectIncludeUsage(body)
		if !changed {
			if !bytes.Equal(out, body) {
				t.Fatalf("unchanged but different: %q -> %q", body, out)
			}
			return
		}
		var v struct {
			StreamOptions struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		if err := jsonv2.Unmarshal(out, &v, jsonv2.RejectUnknownMembers(false)); err != nil {
			// The input may have been invalid past the point read; a
			// changed body must be as valid as the original.
			if jsonv2.Unmarshal(body, new(any)) == nil {
				t.Fatalf("valid %q became invalid %q: %v", body, out, err)
			}
			return
		}
		if !v.StreamOptions.IncludeUsage {
			t.Fatalf("%q -> %q does not ask for usage", body, out)
		}
	})
}
