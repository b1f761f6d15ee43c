package models

import (
	"strings"
	"testing"
)

func TestStripEscapes(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"plain", "loading model", "loading model"},
		{"color", "\x1b[31merror\x1b[0m: bad magic", "error: bad magic"},
		{"bold 256 colors", "\x1b[1;38;5;196mfail\x1b[m", "fail"},
		{"cursor moves", "a\x1b[2K\x1b[1Gb", "ab"},
		{"private mode", "\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"},
		{"osc title bel", "\x1b]0;llama-server\x07ready", "ready"},
		{"osc hyperlink st", "see \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ here", "see link here"},
		{"dcs", "a\x1bPq#0;2;0;0;0\x1b\\b", "ab"},
		{"two-byte esc", "a\x1bcb\x1b7c", "abc"},
		{"c1 csi", "a\u009b31mb", "ab"},
		{"c1 osc", "a\u009d0;t\u009cb", "ab"},
		{"tab and cr", "a\tb\rc", "a b c"},
		{"bell and nul", "a\x07b\x00c", "a b c"},
		{"del", "a\x7fb", "a b"},
		{"cut csi", "error\x1b[3", "error"},
		{"lone esc", "error\x1b", "error"},
		{"unterminated osc", "a\x1b]0;title", "a"},
		{"unicode kept", "ünïcode ✓ 模型", "ünïcode ✓ 模型"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := stripEscapes(tc.in); got != tc.want {
				t.Fatalf("stripEscapes(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestClean_InvalidUTF8AndLength(t *testing.T) {
	if got := clean("a\xffb", 10); got != "a?b" {
		t.Fatalf("got %q", got)
	}
	if got := clean(strings.Repeat("é", 10), 5); got != "éé..." {
		t.Fatalf("got %q", got)
	}
}

func TestTail_QuotesEngineOutputWithoutEscapes(t *testing.T) {
	var tl tail
	_, _ = tl.Write([]byte("\x1b[32mINFO\x1b[0m loading\n\x1b[31mERROR\x1b[0m gguf_init: invalid magic \x1b]0;x\x07\n"))
	if got, want := tl.text(), ": INFO loading | ERROR gguf_init: invalid magic"; got != want {
		t.Fatalf("tail %q, want %q", got, want)
	}
}
