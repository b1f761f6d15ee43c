package proxy

import (
	"strconv"
	"testing"
)

func TestModelLabels_OfResolvesAsTheQueenDoes(t *testing.T) {
	var l modelLabels
	l.learn("Llama-3.2-1B-Instruct-Q4_K_M.gguf")
	l.learn("org/llama-3.2-1b-instruct")
	l.learn("m1")
	l.learn("")
	for _, tc := range []struct{ asked, want string }{
		{"m1", "m1"},
		{" M1  ", "m1"},
		{"llama-3.2-1b-instruct", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"},
		{"LLAMA-3.2-1B-INSTRUCT-Q4_K_M", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"},
		{"org/llama-3.2-1b-instruct", "org/llama-3.2-1b-instruct"},
		{"m2", labelOther},
		{"", labelOther},
		{"llama", labelOther},
	} {
		if got := l.of(tc.asked); got != tc.want {
			t.Errorf("of(%q) = %q, want %q", tc.asked, got, tc.want)
		}
	}
}

func TestModelLabels_LearnsAtMostMaxNames(t *testing.T) {
	var l modelLabels
	for i := range maxModelLabels + 10 {
		l.learn("model-" + strconv.Itoa(i))
	}
	if n := len(l.keys); n != maxModelLabels {
		t.Fatalf("learned %d names, want at most %d", n, maxModelLabels)
	}
	if got := l.of("model-" + strconv.Itoa(maxModelLabels+4)); got != labelOther {
		t.Fatalf("a name past the bound labels as %q, want %q", got, labelOther)
	}
}
