package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestE2E_AISDKClient runs the Vercel AI SDK (with node) against `rbee demo`:
// generateText and streamText through the OpenAI provider's default model,
// which calls the Responses API, and through its chat model; and a Responses
// follow-up that must reach the worker holding the previous response. CI
// installs node and the packages; elsewhere the test skips, saying why,
// unless RBEE_REQUIRE_NODE is set.
func TestE2E_AISDKClient(t *testing.T) { runClientAgainstDemo(t, "ai-sdk-client", "ai") }

// runClientAgainstDemo runs testdata/<client>/client.mjs with node against
// `rbee demo`, once for each of the demo's models, and fails the test unless
// it exits 0 having printed OK. Without node or the npm package pkg (npm ci
// --prefix testdata/<client>) the test skips saying what to run, or fails
// when RBEE_REQUIRE_NODE is set (as in CI).
func runClientAgainstDemo(t *testing.T, client, pkg string) {
	t.Helper()
	nodeBin, dir := nodeClient(t, client, pkg)
	addr := startDemo(t)
	for _, model := range []string{"llama-3.2-1b", "qwen2.5-0.5b"} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, nodeBin, filepath.Join(dir, "client.mjs"), "http://"+addr+"/v1", model).CombinedOutput()
		cancel()
		t.Logf("%s, %s:\n%s", client, model, out)
		if err != nil || !strings.Contains(string(out), "OK") {
			t.Fatalf("%s against rbee demo (%s): %v", client, model, err)
		}
	}
}
