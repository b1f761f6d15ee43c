package proxy

import (
	"reflect"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
)

// FuzzChunkScanner holds the chunk scanner to the reflective decoder: on any
// bytes, into a fresh chunk and into one reused after another chunk, it
// fills in what jsonv2.Unmarshal does, or fails where it fails.
func FuzzChunkScanner(f *testing.F) {
	for _, s := range []string{
		`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`,
		`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","system_fingerprint":"b1","choices":[{"index":0,"delta":{"content":"Hel\"lo\n\u00e9 \/"},"logprobs":null,"finish_reason":null}]}`,
		`{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"x":[1.5e3,-0.25,true,false,null,{"a":{}}]}}`,
		` { "id" : "c" , "choices" : [ ] , "usage" : null } `,
		`{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"hi","finish_reason":null}]}`,
		`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}`,
		`{"error":{"message":"boom","code":500}}`,
		`{"choices":null,"\u0069d":"x"}`,
		`{"choices":[{"index":1.5}]}`,
		`{"choices":[{"index":-0}]}`,
		`{"choices":[{"index":01}]}`,
		`{"choices":[null]} `,
		`{"id":"a","id":"b"}`,
		`{"x":{"a":1,"a":2}}`,
		`{"choices":[{"delta":{"content":"\ud83d\ude00"}}]}`,
		`{"choices":[{"delta":{"content":"\ud800"}}]}`,
		"{\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}",
		`{"choices":[{"delta":{"content":"héllo wörld 😀 \n"}}]}`,
		"{\"choices\":[{\"delta\":{\"content\":\"ok \xc3\x28 then\"}}]}",
		"{\"choices\":[{\"delta\":{\"content\":\"a\x1fb\"}}]}",
		`{"choices":[{"delta":{"content":"a"}}]} x`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	prev := []byte(`{"id":"p","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"x","tool_calls":[1]},"text":"y","finish_reason":"stop"},{"index":1}],"usage":{},"error":null}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, warm := range []bool{false, true} {
			var s chunkScanner
			var got, want wireChunk
			if warm {
				if err := s.decode(prev, &got); err != nil {
					t.Fatal(err)
				}
				if err := jsonv2.Unmarshal(prev, &want); err != nil {
					t.Fatal(err)
				}
			}
			got.reset()
			want.reset()
			wantErr := jsonv2.Unmarshal(data, &want)
			err := s.decode(data, &got)
			if (err == nil) != (wantErr == nil) {
				t.Fatalf("warm %v: error %v, reference's %v", warm, err, wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("warm %v: decoded\n%#v\nreference:\n%#v", warm, got, want)
			}
		}
	})
}

// TestChunkScanner_CommonChunksTakeTheFastPath: the chunks engines send are
// read by the scanner itself, not handed to the reference.
func TestChunkScanner_CommonChunksTakeTheFastPath(t *testing.T) {
	for _, s := range []string{
		`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`,
		`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"content":" said \"hi\"\n"},"finish_reason":null}]}`,
		`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`,
	} {
		var sc chunkScanner
		var c wireChunk
		sc.b = []byte(s)
		if err := sc.chunk(&c); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

// BenchmarkChunkScanner is the entry node's reading of one stream chunk for
// migration, beside the reflective decoder it stands in for.
func BenchmarkChunkScanner(b *testing.B) {
	data := []byte(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}`)
	b.Run("scanner", func(b *testing.B) {
		var s chunkScanner
		var c wireChunk
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			c.reset()
			if err := s.decode(data, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reflect", func(b *testing.B) {
		var c wireChunk
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			c.reset()
			if err := jsonv2.Unmarshal(data, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The scanner itself (no fallback) takes text that is not ASCII, and leaves
// a string with bytes that are not UTF-8, or a control character, to the
// reference decoder.
func TestChunkScanner_TextBeyondASCII(t *testing.T) {
	for _, tc := range []struct {
		content string
		ok      bool
	}{
		{"héllo wörld 😀", true},
		{"plain", true},
		{"ok \xc3\x28 then", false},
		{"\xff", false},
		{"a\x1fb", false},
	} {
		data := []byte(`{"choices":[{"index":0,"delta":{"content":"` + tc.content + `"}}]}`)
		var s chunkScanner
		var c wireChunk
		s.b, s.i = data, 0
		err := s.chunk(&c)
		if tc.ok && (err != nil || len(c.Choices) != 1 || c.Choices[0].Delta.Content != tc.content) {
			t.Errorf("%q: %v %+v, want its text", tc.content, err, c.Choices)
		}
		if !tc.ok && err != errChunkSlow {
			t.Errorf("%q: %v, want it left to the reference", tc.content, err)
		}
	}
}
