package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHasLineWith(t *testing.T) {
	lines := []string{"NODE  WORKER      STATE", "n0    ext/8080    down", "n1    llm/9000    idle"}
	for _, tc := range []struct {
		words []string
		want  bool
	}{
		{[]string{"n0", "ext/8080", "down"}, true},
		{[]string{"n1", "idle"}, true},
		{[]string{"down", "n0"}, false}, // out of order
		{[]string{"n0", "idle"}, false}, // on different lines
		{nil, true},
	} {
		if got := HasLineWith(lines, tc.words); got != tc.want {
			t.Errorf("HasLineWith(%q) = %v, want %v", tc.words, got, tc.want)
		}
	}
}

func TestGolden_UpdateWritesThenCompares(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.golden")
	Golden(t, path, "hello\n", true)
	if b, err := os.ReadFile(path); err != nil || string(b) != "hello\n" {
		t.Fatalf("-update wrote %q (%v)", b, err)
	}
	Golden(t, path, "hello\n", false)
}
