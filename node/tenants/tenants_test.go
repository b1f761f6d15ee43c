package tenants

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
)

func sum(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

func TestParse(t *testing.T) {
	good := `
[[key]]
name = "alice"
key = "sk-alice-0001"
priority = "interactive"
weight = 2
max_concurrent = 4
requests_per_minute = 60
models = ["llama-*", "qwen2.5-7b"]

[[key]]
name = "batch-jobs"
sha256 = "` + sum("sk-batch-0001") + `"
priority = "batch"
`
	tab, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	a := tab.Lookup("sk-alice-0001")
	if a == nil || a.Name != "alice" || a.Class != Interactive || a.Weight != 2 || a.MaxConcurrent != 4 || a.PerMinute != 60 {
		t.Fatalf("alice: %+v", a)
	}
	b := tab.Lookup("sk-batch-0001")
	if b == nil || b.Name != "batch-jobs" || b.Class != Batch || b.Weight != 1 {
		t.Fatalf("by sha256: %+v", b)
	}
	if tab.Lookup("sk-nobody-001") != nil || tab.Lookup("") != nil {
		t.Fatal("an unknown key found a tenant")
	}
	for model, want := range map[string]bool{"llama-3.1-8b": true, "qwen2.5-7b": true, "qwen2.5-72b": false, "mistral": false} {
		if a.Allows(model) != want {
			t.Errorf("alice allows %s: %v, want %v", model, !want, want)
		}
	}
	if !b.Allows("anything") {
		t.Error("no models list should allow every model")
	}

	bad := []struct{ doc, want string }{
		{`[[key]]
name = "x"`, "exactly one of key and sha256"},
		{`[[key]]
name = "x"
key = "sk-aaaaaaaa"
sha256 = "00"`, "exactly one"},
		{`[[key]]
name = "x"
sha256 = "abc"`, "64 hex digits"},
		{`[[key]]
name = "x"
key = "short"`, "shorter than 8"},
		{`[[key]]
name = "bad name"
key = "sk-aaaaaaaa"`, "name"},
		{`[[key]]
name = "x"
key = "sk-aaaaaaaa"
priority = "urgent"`, `priority "urgent"`},
		{`[[key]]
name = "x"
key = "sk-aaaaaaaa"
weight = 0`, "weight 0"},
		{`[[key]]
name = "x"
key = "sk-aaaaaaaa"
models = ["[a-"]`, "bad glob"},
		{`[[key]]
name = "x"
key = "sk-aaaaaaaa"
[[key]]
name = "x"
key = "sk-bbbbbbbb"`, "used twice"},
		{`[[key]]
name = "x"
key = "sk-aaaaaaaa"
[[key]]
name = "y"
key = "sk-aaaaaaaa"`, "same key"},
		{`[[key]]
name = "x"
key = "sk-aaaaaaaa"
colour = "red"`, "unknown field"},
	}
	for _, tc := range bad {
		if _, err := Parse([]byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error saying %q", tc.doc, err, tc.want)
		}
	}
}

// The file is read again when it changes; a broken edit keeps the keys in
// force.
func TestFile_Reload(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys.toml")
	write := func(s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("[[key]]\nname = \"a\"\nkey = \"sk-aaaaaaaa\"\n")
	f, err := Open(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()

	write("[[key]]\nname = \"b\"\nkey = \"sk-bbbbbbbb\"\nweight = 3\n")
	testutil.Eventually(t, 10*time.Second, "the new key in force", func() error {
		if f.Table().Lookup("sk-bbbbbbbb") == nil {
			return errors.New("not yet")
		}
		return nil
	})
	if f.Table().Lookup("sk-aaaaaaaa") != nil {
		t.Fatal("a removed key still works")
	}
	write("this is not toml [[[")
	testutil.Consistently(t, 3*time.Second, "the last good keys stay", func() error {
		if f.Table().Lookup("sk-bbbbbbbb") == nil {
			return errors.New("lost the keys")
		}
		return nil
	})
	if err := f.Reload(); err == nil {
		t.Fatal("a broken file reloaded")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none.toml"), nil); err == nil {
		t.Fatal("a missing file opened")
	}
}

// TestMatchModel: keys file globs match model names case-insensitively, and
// their wildcards cross the / that hub names hold.
func TestMatchModel(t *testing.T) {
	for _, tc := range []struct {
		glob, model string
		want        bool
	}{
		{"*", "Qwen/Qwen2.5-7B", true},
		{"qwen*", "Qwen/Qwen2.5-7B", true},
		{"Qwen/*", "qwen/qwen2.5-7b", true},
		{"llama-3.2-1b", "Llama-3.2-1B", true},
		{"llama-?.2*", "llama-3.2-1b-instruct", true},
		{"llama*", "qwen2.5", false},
		{"[lq]*", "Qwen", true},
		{"org/model", "org/other", false},
		{"*-gguf", "acme/tiny-GGUF", true},
	} {
		if got := MatchModel(tc.glob, tc.model); got != tc.want {
			t.Errorf("MatchModel(%q, %q) = %v, want %v", tc.glob, tc.model, got, tc.want)
		}
	}
}
