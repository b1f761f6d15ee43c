package models

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitWords(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string // substring of the error; "" when none is expected
	}{
		{name: "empty", in: "", want: nil},
		{name: "only blanks", in: " \t\n ", want: nil},
		{name: "plain words", in: "  serve  -m\tmodel\n--port 1 ", want: []string{"serve", "-m", "model", "--port", "1"}},
		{name: "single quotes are literal", in: `'a b' 'c\d' '$HOME' '"x"'`, want: []string{"a b", `c\d`, "$HOME", `"x"`}},
		{name: "double quotes escape only some", in: `"a \"b\" \\ \$ \` + "`" + ` \n"`, want: []string{`a "b" \ $ ` + "` " + `\n`}},
		{name: "double-quoted backslash-newline vanishes", in: "\"a\\\nb\"", want: []string{"ab"}},
		{name: "backslash outside quotes", in: `a\ b \'c \\ \"`, want: []string{"a b", "'c", `\`, `"`}},
		{name: "line continuation", in: "a\\\nb c", want: []string{"ab", "c"}},
		{name: "quotes join a word", in: `--x='a b'"c d"e`, want: []string{"--x=a bc de"}},
		{name: "empty quoted words", in: `'' "" x`, want: []string{"", "", "x"}},
		{name: "nothing expanded", in: `$HOME ~ *.gguf $(id) ` + "`id`", want: []string{"$HOME", "~", "*.gguf", "$(id)", "`id`"}},
		{name: "utf-8 passes through", in: `"héllo wörld" ü\ ß`, want: []string{"héllo wörld", "ü ß"}},
		{name: "braces untouched", in: `--port={port} '{path}'`, want: []string{"--port={port}", "{path}"}},
		{name: "unterminated single quote", in: `a 'b c`, wantErr: "unterminated single quote"},
		{name: "unterminated double quote", in: `a "b c`, wantErr: "unterminated double quote"},
		{name: "escaped closing double quote", in: `"a\"`, wantErr: "unterminated double quote"},
		{name: "trailing backslash", in: `a \`, wantErr: "trailing backslash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SplitWords(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SplitWords(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("SplitWords(%q): %v", tt.in, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("SplitWords(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
