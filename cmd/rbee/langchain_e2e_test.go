package main

import "testing"

// TestE2E_LangChainClient runs LangChain.js (with node) against `rbee demo`,
// whose workers are simulated: withStructuredOutput with a zod schema (by
// response_format's JSON schema and by a forced function call) and
// bindTools, invoked and streamed, through chat completions and the
// Responses API; zod must accept every document, and after a tool's result
// the answer must be text. It shows that the simulator's tool calls and
// structured output pass through rbee's proxy as a real client reads them.
// CI installs node and the packages; elsewhere the test skips, saying why,
// unless RBEE_REQUIRE_NODE is set.
func TestE2E_LangChainClient(t *testing.T) {
	runClientAgainstDemo(t, "langchain-client", "@langchain/openai")
}
