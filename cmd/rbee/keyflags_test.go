package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeyFlags: both key flags at once are refused, and a key file others
// can read is warned about.
func TestKeyFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, _, err := runRbee("keygen")
	if err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(key)
	_, stderr, err := runRbee("status", "--http-addr", "127.0.0.1:1", "--cluster-key", strings.TrimSpace(string(b)), "--cluster-key-file", key)
	if err == nil || !strings.Contains(stderr, "both given") {
		t.Errorf("both flags: %v %s", err, stderr)
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, _ = runRbee("status", "--http-addr", "127.0.0.1:1", "--cluster-key-file", key)
	if !strings.Contains(stderr, "can be read by others") {
		t.Errorf("a world-readable key file gave no warning: %s", stderr)
	}
}

// TestHelp_Groups: `rbee help GROUP` lists the group's subcommands, and
// `worker run --help` marks --instance required and states --slots'
// default once.
func TestHelp_Groups(t *testing.T) {
	t.Parallel()
	for group, sub := range map[string]string{"node": "members", "worker": "run", "model": "pull"} {
		out, _, err := runRbee("help", group)
		if err != nil || !strings.Contains(out, "COMMANDS:") || !strings.Contains(out, "   "+sub) {
			t.Errorf("rbee help %s: %v\n%s", group, err, out)
		}
	}
	out, _, _ := runRbee("worker", "run", "--help")
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.Contains(line, "--instance") && !strings.Contains(line, "(required)"):
			t.Errorf("--instance not marked required: %q", line)
		case strings.Contains(line, "--slots") && strings.Count(line, "default") != 1:
			t.Errorf("--slots states its default %d times: %q", strings.Count(line, "default"), line)
		}
	}
}
