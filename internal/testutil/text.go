package testutil

import (
	"os"
	"strings"
	"testing"
)

// Golden compares got with the golden file at path, or, when update is set
// (a test binary's -update flag), writes got there instead.
func Golden(tb testing.TB, path, got string, update bool) {
	tb.Helper()
	if update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		tb.Errorf("output differs from %s (run with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// HasLineWith reports whether one of lines holds every one of words, in
// order: a check of a rendered table that does not depend on its spacing.
func HasLineWith(lines, words []string) bool {
	for _, l := range lines {
		rest, ok := l, true
		for _, w := range words {
			i := strings.Index(rest, w)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(w):]
		}
		if ok {
			return true
		}
	}
	return false
}
