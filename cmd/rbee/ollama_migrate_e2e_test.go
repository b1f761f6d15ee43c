package main

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
)

// continueTemplate is tiny's chat template written the way real models'
// templates are (a `$last` check): a trailing assistant message is left
// open, its text the end of the prompt, so the model continues it. Ollama
// has no prefill handling of its own; the template decides.
const continueTemplate = `{{- $cont := false }}{{- range $i, $m := .Messages }}<|{{ .Role }}|>{{ .Content }}` +
	`{{ if and (eq (len (slice $.Messages $i)) 1) (eq .Role "assistant") }}{{ $cont = true }}{{ else }}
{{ end }}{{ end }}{{ if not $cont }}<|assistant|>{{ end }}`

// TestOllama_WorkerKilledMidAnswer: two real Ollama servers, each a
// --worker of its own hive. A stream is frozen (SIGSTOP) mid-answer, the
// Ollama serving it is SIGKILLed, and the other continues it: the client
// gets one stream, its text starting with what it had before the kill,
// ending with a finish and [DONE]. Whether the continued text equals the
// uninterrupted answer depends on where the cut falls (tiny's tokenizer
// does not always give back the tokens it generated); it is logged.
func TestOllama_WorkerKilledMidAnswer(t *testing.T) {
	t.Parallel()
	baseA, pgA := foreignOllamaWith(t, continueTemplate, "tinyc")
	baseB, pgB := foreignOllamaWith(t, continueTemplate, "tinyc")
	mc := &migCluster{cluster: newCluster(t)}
	q := mc.start(nodeSpec{name: "q", extra: []string{"--roles", "queen"}})[0]
	ps := mc.start(
		nodeSpec{name: "e", join: q.gossipAddr, extra: []string{"--roles", "none"}},
		nodeSpec{name: "ha", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", baseA + ",slots=2"}},
		nodeSpec{name: "hb", join: q.gossipAddr, extra: []string{"--roles", "hive", "--worker", baseB + ",slots=2"}})
	mc.e = ps[0]
	pg := map[string]int{"ha": pgA, "hb": pgB}
	mc.waitSlotsOf(t, "tinyc:latest", 4)
	body := func(prompt string) string {
		return fmt.Sprintf(`{"model":"tinyc","messages":[{"role":"user","content":%q}],"stream":true,"max_tokens":48,"temperature":0,"seed":42,"stream_options":{"include_usage":true}}`, prompt)
	}
	chat := migAPI{name: "chat", path: "/v1/chat/completions", body: body}
	// Both load the model first: the continuation then waits for no load.
	for i := range 2 {
		if s := mc.stream(t, chat, fmt.Sprintf("warm %d", i), 0, nil); s.err != nil {
			t.Fatalf("warm-up: %v", s.err)
		}
	}
	for attempt := range 5 {
		prompt := fmt.Sprintf("beepr hive %d", attempt)
		want := streamFrom(t, baseA, body(prompt))
		var killed string
		var before string
		s := mc.stream(t, chat, prompt, 1, func() {
			// Freeze both, then kill the one serving (the hive
			// lists its lease within a second).
			for _, g := range pg {
				_ = syscall.Kill(-g, syscall.SIGSTOP)
			}
			defer func() {
				for _, g := range pg {
					_ = syscall.Kill(-g, syscall.SIGCONT)
				}
			}()
			testutil.Eventually(t, 5*time.Second, "the lease listed", func() error {
				var view api.ClusterView
				if err := mc.getJSON(mc.e.httpAddr, "/v1/cluster", &view); err != nil {
					return err
				}
				for _, h := range view.Hives {
					if len(h.Leases) > 0 {
						killed = h.HiveID
						return nil
					}
				}
				return fmt.Errorf("no hive lists a lease")
			})
			_ = syscall.Kill(-pg[killed], syscall.SIGKILL)
		})
		if s.err != nil {
			t.Fatalf("the stream broke for the client: %v (text %q)", s.err, s.text)
		}
		before = firstText(s)
		if !strings.Contains(mc.e.log(), `msg="stream migrated"`) {
			// Ollama finished the answer before the freeze.
			t.Logf("attempt %d: the answer was whole before the kill of %s's Ollama; again", attempt, killed)
			delete(pg, killed)
			if len(pg) < 2 {
				t.Skip("both Ollamas killed without a migration: the answers are too quick to cut on this machine")
			}
			continue
		}
		if !strings.HasPrefix(s.text, before) || len(s.text) <= len(before) {
			t.Fatalf("text %q does not go on from %q", s.text, before)
		}
		last := s.events[len(s.events)-1]
		if last.data != "[DONE]" {
			t.Fatalf("last event %q, want [DONE]", last.data)
		}
		t.Logf("Ollama of %s SIGKILLed after %d chunk(s); the client's longest wait between tokens %v; text equal to the uninterrupted answer: %v\n got %q\nwant %q",
			killed, 1, s.maxGap().Round(time.Millisecond), s.text == want, s.text, want)
		return
	}
	t.Fatal("no attempt cut an answer mid-way")
}

// firstText is the text of a stream's first text event.
func firstText(s *migStream) string {
	for _, ev := range s.events {
		if txt, ok := textOf(migAPIs[0], ev); ok {
			return txt
		}
	}
	return ""
}

// streamFrom streams body straight from an OpenAI-compatible server and
// returns the answer's text.
func streamFrom(t *testing.T, base, body string) string {
	t.Helper()
	s := streamURL(t, base+"/v1/chat/completions", "", migAPIs[0], body, 0, nil)
	if s.err != nil {
		t.Fatalf("straight from %s: %v", base, s.err)
	}
	return s.text
}
