package main

// End-to-end test of usage accounting: real nodes and simulated workers, a
// mix of streaming and non-streaming requests under two API keys, and
// `rbee usage --json` checked against what the simulators counted, before
// and after the queen is SIGKILLed.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
)

const (
	usageKeyA = "sk-aaaaaaaa"
	usageKeyB = "sk-bbbbbbbb"
)

// usageSim runs `rbee worker simulate` for model m, unpaced, and returns its
// address.
func usageSim(tb testing.TB, dir, name string) string {
	tb.Helper()
	ports, err := freePorts(1)
	if err != nil {
		tb.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	startProcess(tb, dir, name, rbeeBin, "worker", "simulate", "--model", "m", "--port", strconv.Itoa(ports[0]),
		"--slots", "4", "--tokens-per-second", "0")
	waitHTTP(tb, "http://"+addr+"/health")
	return addr
}

// simTokens is what a simulator counted.
type simTokens struct {
	Served           int64 `json:"served"`
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

func simStats(tb testing.TB, addrs ...string) simTokens {
	tb.Helper()
	var sum simTokens
	for _, a := range addrs {
		resp, err := http.Get("http://" + a + "/rbee/sim/stats")
		if err != nil {
			tb.Fatal(err)
		}
		var s simTokens
		err = json.NewDecoder(resp.Body).Decode(&s)
		resp.Body.Close()
		if err != nil {
			tb.Fatal(err)
		}
		sum.Served += s.Served
		sum.PromptTokens += s.PromptTokens
		sum.CompletionTokens += s.CompletionTokens
	}
	return sum
}

// usageRequest is one kind of request of the mix.
type usageRequest struct {
	path, body string
	stream     bool
	// usageChunk: the client asked for the usage event and must get
	// it; else it must not.
	usageChunk bool
}

var usageMix = []usageRequest{
	{path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"tell me %d things"}],"max_tokens":%d,"stream":true}`, stream: true},
	{path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"tell me %d things"}],"max_tokens":%d,"stream":true,"stream_options":{"include_usage":true}}`, stream: true, usageChunk: true},
	{path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"tell me %d things"}],"max_tokens":%d}`},
	{path: "/v1/completions", body: `{"model":"m","prompt":"count to %d","max_tokens":%d,"stream":true}`, stream: true},
}

// sendMix sends n requests of the mix through the nodes at addrs, under
// keys in turn, and checks each answer; it returns the requests per key.
func sendMix(t *testing.T, hc *http.Client, addrs []string, n int, perKey map[string]int64) {
	t.Helper()
	keys := map[string]string{usageKeyA: "a", usageKeyB: "b"}
	order := []string{usageKeyA, usageKeyB}
	for i := range n {
		m := usageMix[i%len(usageMix)]
		key := order[(i/len(usageMix))%2]
		body := fmt.Sprintf(m.body, i, 3+i%5)
		req, err := http.NewRequest(http.MethodPost, "http://"+addrs[i%len(addrs)]+m.path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d (%s): %d %v: %s", i, body, resp.StatusCode, err, b)
		}
		got := string(b)
		if m.stream {
			if !strings.HasSuffix(got, "data: [DONE]\n\n") {
				t.Fatalf("request %d: stream does not end in [DONE]:\n%s", i, got)
			}
			if has := strings.Contains(got, `"usage"`); has != m.usageChunk {
				t.Fatalf("request %d (%s): usage event in the stream %v, want %v:\n%s", i, body, has, m.usageChunk, got)
			}
		} else if !strings.Contains(got, `"usage"`) {
			t.Fatalf("request %d: no usage in %s", i, got)
		}
		perKey[keys[key]]++
	}
}

// usageTotals reads `rbee usage --json` through the node at addr.
func usageTotals(c *cluster, addr string) (api.UsageView, simTokens, map[string]int64, error) {
	out, errOut, err := runRbee("usage", "--json", "--since", "1h", "--http-addr", addr, "--cluster-key-file", c.keyFile)
	var v api.UsageView
	if err != nil {
		return v, simTokens{}, nil, fmt.Errorf("rbee usage: %w: %s", err, errOut)
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return v, simTokens{}, nil, fmt.Errorf("rbee usage printed %q: %w", out, err)
	}
	var sum simTokens
	perKey := map[string]int64{}
	for _, r := range v.Rows {
		sum.Served += r.Requests
		sum.PromptTokens += r.PromptTokens
		sum.CompletionTokens += r.CompletionTokens
		perKey[r.Key] += r.Requests
	}
	return v, sum, perKey, nil
}

// TestE2E_UsageMatchesWorkersAcrossFailover: the tokens `rbee usage` counts
// are those the workers reported, for streams with and without
// include_usage and for whole answers, per API key; a new queen rebuilds the
// totals from the nodes' full reports.
func TestE2E_UsageMatchesWorkersAcrossFailover(t *testing.T) {
	c := newCluster(t)
	keysFile := filepath.Join(c.dir, "keys.toml")
	if err := os.WriteFile(keysFile, []byte(fmt.Sprintf("[[key]]\nname = \"a\"\nkey = %q\n\n[[key]]\nname = \"b\"\nkey = %q\n", usageKeyA, usageKeyB)), 0o600); err != nil {
		t.Fatal(err)
	}
	s1, s2 := usageSim(t, c.dir, "sim1"), usageSim(t, c.dir, "sim2")
	q := c.start(nodeSpec{name: "q", extra: []string{"--roles", "queen", "--queen-priority", "1", "--api-keys-file", keysFile}})[0]
	rest := c.start(
		nodeSpec{name: "h1", join: q.gossipAddr, extra: []string{"--roles", "queen,hive", "--api-keys-file", keysFile,
			"--worker", "http://" + s1 + ",model=m,slots=4"}},
		nodeSpec{name: "h2", join: q.gossipAddr, extra: []string{"--roles", "queen,hive", "--api-keys-file", keysFile,
			"--worker", "http://" + s2 + ",model=m,slots=4"}},
	)
	h1, h2 := rest[0], rest[1]
	ps := []*proc{q, h1, h2}
	if got := c.waitAgree(ps, 20*time.Second); got != "q" {
		t.Fatalf("queen %s, want q", got)
	}
	testutil.Eventually(t, 20*time.Second, "model m served", modelServed(c, h1))
	testutil.Eventually(t, 20*time.Second, "model m served", modelServed(c, h2))

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	hc := &http.Client{Timeout: 30 * time.Second, Transport: tr}
	perKey := map[string]int64{}
	entries := []string{h1.httpAddr, h2.httpAddr}

	check := func(when, addr string) {
		t.Helper()
		testutil.Every(200*time.Millisecond).Eventually(t, 20*time.Second, "rbee usage "+when+" equals the simulators' counters", func() error {
			want := simStats(t, s1, s2)
			v, got, keys, err := usageTotals(c, addr)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("rbee usage (queen %s) counts %+v, the simulators %+v", v.Queen, got, want)
			}
			if keys["a"] != perKey["a"] || keys["b"] != perKey["b"] {
				return fmt.Errorf("requests per key %v, sent %v", keys, perKey)
			}
			return nil
		})
	}

	sendMix(t, hc, entries, 24, perKey)
	check("before the failover", h1.httpAddr)

	c.kill(q)
	if got := c.waitNewQueen(ps, "q", 20*time.Second); got == "q" {
		t.Fatalf("queen still q")
	}
	sendMix(t, hc, entries, 16, perKey)
	check("after the failover", h2.httpAddr)
}
