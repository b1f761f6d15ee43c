package main

import (
	"slices"
	"testing"
)

func TestInterspersed_MovesTrailingFlagsBeforeArguments(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"flag after address", []string{"rbee", "node", "join", "127.0.0.1:7948", "--http-addr", "127.0.0.1:7833"},
			[]string{"rbee", "node", "join", "--http-addr", "127.0.0.1:7833", "127.0.0.1:7948"}},
		{"flag with = after address", []string{"rbee", "node", "join", "a:1", "--http-addr=h:2", "b:3"},
			[]string{"rbee", "node", "join", "--http-addr=h:2", "a:1", "b:3"}},
		{"flags already first", []string{"rbee", "node", "join", "--http-addr", "h:2", "a:1"},
			[]string{"rbee", "node", "join", "--http-addr", "h:2", "a:1"}},
		{"bool flag takes no value", []string{"rbee", "node", "members", "--json", "--http-addr", "h:2"},
			[]string{"rbee", "node", "members", "--json", "--http-addr", "h:2"}},
		{"after -- untouched", []string{"rbee", "node", "join", "a:1", "--", "--http-addr", "x"},
			[]string{"rbee", "node", "join", "a:1", "--", "--http-addr", "x"}},
		{"unknown command untouched", []string{"rbee", "nope", "x", "--y"}, []string{"rbee", "nope", "x", "--y"}},
		{"no command", []string{"rbee"}, []string{"rbee"}},
		{"worker run without --: the command keeps its flags", []string{"rbee", "worker", "run", "--group", "llm", "llama-server", "-m", "m.gguf", "--port", "8080"},
			[]string{"rbee", "worker", "run", "--group", "llm", "--", "llama-server", "-m", "m.gguf", "--port", "8080"}},
		{"worker run with --", []string{"rbee", "worker", "run", "--group", "llm", "--", "llama-server", "-m", "x"},
			[]string{"rbee", "worker", "run", "--group", "llm", "--", "llama-server", "-m", "x"}},
	}
	app := newApp()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := interspersed(app, tc.in); !slices.Equal(got, tc.want) {
				t.Fatalf("interspersed(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
