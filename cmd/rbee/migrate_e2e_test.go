package main

// Request migration end to end: a stream whose hive or worker dies
// mid-answer (SIGKILL, or a link cut in network namespaces) goes on from
// another worker, and the client's stream is the uninterrupted answer byte
// for byte (the simulator continues deterministically).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/internal/netlab"
	"github.com/rbee/rbee/internal/sim"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// Each simulated worker streams migTPS tokens a second, so a 60-token
// answer lasts 1.2 s and a kill after 15 tokens lands mid-way.
const (
	migTPS    = 50
	migTokens = 60
	migKillAt = 15
)

var migSimArgs = []string{"--slots", "4", "--tokens-per-second", strconv.Itoa(migTPS), "--max-tokens", "200"}

// migCluster is a queen-only node q, an entry-only node e (the client's),
// and hives, each with its own simulated workers (separate processes).
type migCluster struct {
	*cluster
	q, e  *proc
	hives []*migHive
}

type migHive struct {
	spec  nodeSpec
	node  *proc
	sims  []*proc
	addrs []string // the sims' base URLs
}

func newMigCluster(t testing.TB, hives, workersPerHive int) *migCluster {
	t.Helper()
	c := newCluster(t)
	mc := &migCluster{cluster: c}
	mc.q = c.start(nodeSpec{name: "q", extra: []string{"--roles", "queen"}})[0]
	specs := []nodeSpec{{name: "e", join: mc.q.gossipAddr, extra: []string{"--roles", "none"}}}
	for i := range hives {
		h := &migHive{}
		extra := []string{"--roles", "hive"}
		for j := range workersPerHive {
			s, addr := mc.startSim(t, fmt.Sprintf("sim%d%d", i, j))
			h.sims, h.addrs = append(h.sims, s), append(h.addrs, addr)
			extra = append(extra, "--worker", addr+",model=m,slots=4")
		}
		h.spec = nodeSpec{name: fmt.Sprintf("h%d", i), join: mc.q.gossipAddr, extra: extra}
		specs = append(specs, h.spec)
		mc.hives = append(mc.hives, h)
	}
	ps := c.start(specs...)
	mc.e = ps[0]
	for i, h := range mc.hives {
		h.node = ps[i+1]
	}
	mc.waitSlots(t, 4*hives*workersPerHive)
	return mc
}

// startSim runs a simulated worker as one of the cluster's processes, so a
// test can kill it.
func (mc *migCluster) startSim(t testing.TB, name string) (*proc, string) {
	t.Helper()
	for range maxStartAttempts {
		ports, err := freePorts(1)
		if err != nil {
			t.Fatal(err)
		}
		p := &proc{name: name}
		args := append([]string{"worker", "simulate", "--model", "m", "--port", strconv.Itoa(ports[0])}, migSimArgs...)
		if err := mc.launch(p, exec.Command(rbeeBin, args...)); err != nil {
			t.Fatal(err)
		}
		addr := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		err = testutil.Every(0).Until(10*time.Second, func() error {
			if p.Exited() {
				return errExited
			}
			// Its own word that it listens: another process that took
			// the port first (a parallel test's) answers /health too.
			if !strings.Contains(p.log(), "simulated worker listening") {
				return errors.New("not listening yet")
			}
			resp, err := http.Get(addr + "/health")
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		})
		if err == nil {
			return p, addr
		}
		if !p.Exited() || !strings.Contains(p.log(), "address already in use") {
			t.Fatalf("simulator %s: %v\n%s", name, err, p.log())
		}
	}
	t.Fatalf("simulator %s: no free port", name)
	return nil, ""
}

var errExited = errors.New("exited")

// waitSlots waits until e lists model m with n slots: every worker is in
// the queen's view.
func (mc *migCluster) waitSlots(t testing.TB, n int) { mc.waitSlotsOf(t, "m", n) }

func (mc *migCluster) waitSlotsOf(t testing.TB, model string, n int) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d slots of %s", n, model), func() error {
		var v struct {
			Data []struct {
				ID    string
				Slots int
			}
		}
		if err := mc.getJSON(mc.e.httpAddr, "/v1/models", &v); err != nil {
			return err
		}
		for _, m := range v.Data {
			if m.ID == model && m.Slots == n {
				return nil
			}
		}
		return fmt.Errorf("models: %+v", v.Data)
	})
}

// serving returns the hive and worker index of the one simulator
// generating now.
func (mc *migCluster) serving(t testing.TB) (hive, worker int) {
	t.Helper()
	hive = -1
	testutil.Eventually(t, 5*time.Second, "a simulator generating", func() error {
		for i, h := range mc.hives {
			for j, addr := range h.addrs {
				if h.sims[j].Exited() {
					continue
				}
				var st sim.Stats
				if err := getJSONURL(addr+"/rbee/sim/stats", &st); err == nil && st.Active > 0 {
					hive, worker = i, j
					return nil
				}
			}
		}
		return errors.New("none is")
	})
	return hive, worker
}

func getJSONURL(url string, out any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// migAPI is one of the streaming APIs migration continues: its request, and
// how to read the text out of its events.
type migAPI struct {
	name, path string
	body       func(prompt string) string
}

var migAPIs = []migAPI{
	{"chat", "/v1/chat/completions", func(p string) string {
		return fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":%q}],"stream":true,"max_tokens":%d,"seed":7,"temperature":0,"stream_options":{"include_usage":true}}`, p, migTokens)
	}},
	{"completions", "/v1/completions", func(p string) string {
		return fmt.Sprintf(`{"model":"m","prompt":%q,"stream":true,"max_tokens":%d,"stream_options":{"include_usage":true}}`, p+"\n", migTokens)
	}},
	{"responses", "/v1/responses", func(p string) string {
		return fmt.Sprintf(`{"model":"m","input":%q,"stream":true,"max_output_tokens":%d}`, p, migTokens)
	}},
}

// sseEv is one event the client read, and when.
type sseEv struct {
	at   time.Time
	name string
	data string
}

// migStream is what the client saw of one streamed answer.
type migStream struct {
	events []sseEv
	text   string
	// textAt is when each text-bearing event arrived.
	textAt []time.Time
	err    error
}

// maxGap is the longest wait between two text events: the pause a
// migration cost the client.
func (s *migStream) maxGap() time.Duration {
	var gap time.Duration
	for i := 1; i < len(s.textAt); i++ {
		gap = max(gap, s.textAt[i].Sub(s.textAt[i-1]))
	}
	return gap
}

// textOf returns the text an event adds to the answer.
func textOf(api migAPI, ev sseEv) (string, bool) {
	if ev.data == "[DONE]" {
		return "", false
	}
	var v struct {
		Type    string
		Delta   *string
		Choices []struct {
			Text  *string
			Delta struct{ Content *string }
		}
	}
	if json.Unmarshal([]byte(ev.data), &v) != nil {
		return "", false
	}
	if api.name == "responses" {
		if v.Type == "response.output_text.delta" && v.Delta != nil {
			return *v.Delta, true
		}
		return "", false
	}
	for _, c := range v.Choices {
		switch {
		case c.Text != nil && *c.Text != "":
			return *c.Text, true
		case c.Delta.Content != nil && *c.Delta.Content != "":
			return *c.Delta.Content, true
		}
	}
	return "", false
}

// stream sends one streaming request through e and reads its events; after
// the at-th text event it calls fault (once), which breaks the answer.
func (mc *migCluster) stream(t testing.TB, api migAPI, prompt string, at int, fault func()) *migStream {
	t.Helper()
	return streamURL(t, "http://"+mc.e.httpAddr+api.path, mc.key.HTTPToken(), api, api.body(prompt), at, fault)
}

// streamURL is stream for any server: body posted to url with token.
func streamURL(t testing.TB, url, token string, api migAPI, body string, at int, fault func()) *migStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d", api.name, resp.StatusCode)
	}
	s := &migStream{}
	var name string
	var data []string
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			s.err = err
			if errors.Is(err, io.EOF) {
				s.err = nil
			}
			return s
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if len(data) == 0 {
				name = ""
				continue
			}
			ev := sseEv{at: time.Now(), name: name, data: strings.Join(data, "\n")}
			s.events = append(s.events, ev)
			name, data = "", nil
			if txt, ok := textOf(api, ev); ok {
				s.text += txt
				s.textAt = append(s.textAt, ev.at)
				if len(s.textAt) == at && fault != nil {
					fault()
				}
			}
		case strings.HasPrefix(line, "event:"):
			name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
}

// checkOneStream checks that s is one uninterrupted answer of want: the
// whole text once, one identity, one role chunk, the end and the usage.
func checkOneStream(t testing.TB, api migAPI, s *migStream, want string) {
	t.Helper()
	if s.err != nil {
		t.Fatalf("%s: stream broke for the client: %v (text so far %q)", api.name, s.err, s.text)
	}
	if s.text != want {
		t.Fatalf("%s: text\n got %q\nwant %q", api.name, s.text, want)
	}
	if api.name == "responses" {
		checkResponsesStream(t, s, want)
		return
	}
	ids, roles, finishes := map[string]int{}, 0, []string{}
	var usage *struct{ PromptTokens, CompletionTokens int }
	for i, ev := range s.events {
		if ev.data == "[DONE]" {
			if i != len(s.events)-1 {
				t.Errorf("%s: [DONE] is event %d of %d", api.name, i, len(s.events))
			}
			continue
		}
		var v struct {
			ID      string
			Created int64
			Model   string
			Choices []struct {
				Delta        struct{ Role string }
				FinishReason *string `json:"finish_reason"`
			}
			Usage *struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(ev.data), &v); err != nil {
			t.Fatalf("%s: event %d %q: %v", api.name, i, ev.data, err)
		}
		ids[fmt.Sprintf("%s/%d/%s", v.ID, v.Created, v.Model)]++
		for _, c := range v.Choices {
			if c.Delta.Role != "" {
				roles++
			}
			if c.FinishReason != nil {
				finishes = append(finishes, *c.FinishReason)
			}
		}
		if v.Usage != nil {
			usage = &struct{ PromptTokens, CompletionTokens int }{v.Usage.PromptTokens, v.Usage.CompletionTokens}
		}
	}
	if s.events[len(s.events)-1].data != "[DONE]" {
		t.Errorf("%s: no [DONE] at the end", api.name)
	}
	if len(ids) != 1 {
		t.Errorf("%s: chunks carry %d identities (id/created/model), want 1: %v", api.name, len(ids), ids)
	}
	wantRoles := 0
	if api.name == "chat" {
		wantRoles = 1
	}
	if roles != wantRoles {
		t.Errorf("%s: %d role chunks, want %d", api.name, roles, wantRoles)
	}
	if !slices.Equal(finishes, []string{"length"}) {
		t.Errorf("%s: finish reasons %q, want one \"length\"", api.name, finishes)
	}
	if usage == nil || usage.CompletionTokens != migTokens || usage.PromptTokens <= 0 {
		t.Errorf("%s: usage %+v, want %d completion tokens and some prompt tokens", api.name, usage, migTokens)
	}
}

func checkResponsesStream(t testing.TB, s *migStream, want string) {
	t.Helper()
	var respIDs, itemIDs []string
	seq := int64(-1)
	created := 0
	var final struct {
		ID     string
		Status string
		Output []struct {
			ID      string
			Content []struct{ Text string }
		}
		Usage struct {
			InputTokens  int `json:"input_tokens"`
			OutputTokens int `json:"output_tokens"`
		}
	}
	for i, ev := range s.events {
		var v struct {
			Type           string
			SequenceNumber *int64 `json:"sequence_number"`
			ItemID         string `json:"item_id"`
			Text           *string
			Response       *json.RawMessage
		}
		if err := json.Unmarshal([]byte(ev.data), &v); err != nil {
			t.Fatalf("responses: event %d %q: %v", i, ev.data, err)
		}
		if ev.name != v.Type {
			t.Errorf("responses: event %d named %q carries type %q", i, ev.name, v.Type)
		}
		if v.SequenceNumber == nil || *v.SequenceNumber <= seq {
			t.Errorf("responses: event %d (%s) sequence_number %v after %d", i, v.Type, v.SequenceNumber, seq)
		} else {
			seq = *v.SequenceNumber
		}
		if v.ItemID != "" {
			itemIDs = append(itemIDs, v.ItemID)
		}
		switch v.Type {
		case "response.created":
			created++
		case "response.output_text.done":
			if v.Text == nil || *v.Text != want {
				t.Errorf("responses: output_text.done text %v, want the whole answer", v.Text)
			}
		case "response.completed", "response.incomplete":
			if err := json.Unmarshal(*v.Response, &final); err != nil {
				t.Fatal(err)
			}
		}
		if v.Response != nil {
			var r struct{ ID string }
			_ = json.Unmarshal(*v.Response, &r)
			respIDs = append(respIDs, r.ID)
		}
	}
	if created != 1 {
		t.Errorf("responses: %d response.created events, want 1", created)
	}
	slices.Sort(respIDs)
	slices.Sort(itemIDs)
	if len(slices.Compact(respIDs)) != 1 || len(slices.Compact(itemIDs)) != 1 {
		t.Errorf("responses: response ids %v, item ids %v; want one of each", slices.Compact(respIDs), slices.Compact(itemIDs))
	}
	if len(final.Output) != 1 || len(final.Output[0].Content) != 1 || final.Output[0].Content[0].Text != want {
		t.Errorf("responses: final output %+v, want the whole answer", final.Output)
	}
	if final.Usage.OutputTokens != migTokens || final.Usage.InputTokens <= 0 {
		t.Errorf("responses: usage %+v, want %d output tokens", final.Usage, migTokens)
	}
}

// TestMigration_HiveKilled: the hive serving a stream is SIGKILLed mid-way,
// for each API; the client's stream goes on from another hive's worker and
// is, byte for byte, the answer it would have had.
func TestMigration_HiveKilled(t *testing.T) {
	t.Parallel()
	mc := newMigCluster(t, len(migAPIs)+1, 1)
	want := sim.Text(migTokens)
	for i, api := range migAPIs {
		var killed string
		s := mc.stream(t, api, fmt.Sprintf("question %d", i), migKillAt, func() {
			h, _ := mc.serving(t)
			killed = mc.hives[h].node.name
			mc.kill(mc.hives[h].node)
		})
		if killed == "" {
			t.Fatalf("%s: nothing was killed", api.name)
		}
		checkOneStream(t, api, s, want)
		t.Logf("%s: hive %s SIGKILLed after %d tokens; the client's longest wait between tokens: %v", api.name, killed, migKillAt, s.maxGap().Round(time.Millisecond))
	}
	checkMigrationsReported(t, mc.cluster, mc.e, mc.q, len(migAPIs))
}

// TestMigration_WorkerKilled: only the worker dies (SIGKILL of the engine's
// process); its hive lives and breaks the stream off, and the entry node
// continues it on the hive's other worker.
func TestMigration_WorkerKilled(t *testing.T) {
	t.Parallel()
	mc := newMigCluster(t, 1, 2)
	api := migAPIs[0]
	s := mc.stream(t, api, "a question", migKillAt, func() {
		_, w := mc.serving(t)
		mc.hives[0].sims[w].signal(t, syscall.SIGKILL, 10*time.Second)
	})
	checkOneStream(t, api, s, sim.Text(migTokens))
	t.Logf("worker SIGKILLed after %d tokens; the client's longest wait between tokens: %v", migKillAt, s.maxGap().Round(time.Millisecond))
}

// TestMigration_Off: with X-Rbee-Migrate: off the client sees the break,
// as before migration.
func TestMigration_Off(t *testing.T) {
	t.Parallel()
	mc := newMigCluster(t, 2, 1)
	api := migAPIs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+mc.e.httpAddr+api.path, strings.NewReader(api.body("no migration")))
	req.Header.Set("Authorization", "Bearer "+mc.key.HTTPToken())
	req.Header.Set("X-Rbee-Migrate", "off")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	tokens := 0
	var readErr error
	for readErr == nil {
		var line string
		line, readErr = br.ReadString('\n')
		if strings.Contains(line, `"content":"`) && !strings.Contains(line, `"content":""`) {
			if tokens++; tokens == migKillAt {
				h, _ := mc.serving(t)
				mc.kill(mc.hives[h].node)
			}
		}
	}
	if errors.Is(readErr, io.EOF) || tokens >= migTokens {
		t.Fatalf("with migration off the stream ended cleanly after %d tokens (%v); want it broken", tokens, readErr)
	}
}

// checkMigrationsReported: the entry node logged each migration, counted
// it in its metrics and in usage, and the queen lists it in its events for
// the dashboard.
func checkMigrationsReported(t *testing.T, c *cluster, e, q *proc, n int) {
	t.Helper()
	if got := strings.Count(e.log(), `msg="stream migrated"`); got != n {
		t.Errorf("entry node logged %d migrations, want %d", got, n)
	}
	testutil.Eventually(t, 10*time.Second, "migrations counted", func() error {
		resp, err := http.Get("http://" + e.httpAddr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		want := fmt.Sprintf(`rbee_migrations_total{model="m",result="continued"} %d`, n)
		if !strings.Contains(b.String(), want) {
			return fmt.Errorf("no %s in /metrics", want)
		}
		return nil
	})
	testutil.Eventually(t, 20*time.Second, "migrations in usage", func() error {
		var u api.UsageView
		if err := c.getJSON(e.httpAddr, api.PathUsage+"?since=1h", &u); err != nil {
			return err
		}
		var migrated int64
		for _, r := range u.Rows {
			migrated += r.Migrated
		}
		if migrated != int64(n) {
			return fmt.Errorf("usage rows %+v: %d migrated, want %d", u.Rows, migrated, n)
		}
		return nil
	})
	f := c.dialFeed(q)
	waitFeed(t, f, 10*time.Second, feedCond{fmt.Sprintf("a queen event listing %d migrations from %s", n, e.name), func(ev feedEvent) bool {
		if ev.Type != wsapi.TypeQueen || len(ev.Migrations) != n {
			return false
		}
		for _, m := range ev.Migrations {
			// The kill follows the client's migKillAt-th token; a
			// token the worker had sent by then may still reach the
			// entry node before the break.
			if m.Result != wsapi.MigrationContinued || m.Entry != e.name || m.From == "" || m.To == "" ||
				m.Tokens < migKillAt || m.Tokens >= migTokens {
				return false
			}
		}
		return true
	}})
}

// TestMigration_CutLink: in network namespaces, the link of the hive
// serving a stream is cut mid-way (no reset, no close: the packets stop).
// The client waits for failure detection, then the stream goes on from the
// other hive.
func TestMigration_CutLink(t *testing.T) {
	gaps := migrateAcrossCut(t, 1)
	t.Logf("cut link: the client's longest wait between tokens %v", gaps[0].Round(time.Millisecond))
}

// migrateAcrossCut streams trials answers through node a (queen and entry)
// of hives b and c, cutting the serving hive's link mid-way each time and
// healing it after; it returns the client's longest wait between tokens in
// each.
func migrateAcrossCut(t testing.TB, trials int) []time.Duration {
	nc := newNetCluster(t)
	ha, hb, hc := nc.host("a"), nc.host("b"), nc.host("c")
	a := nc.node(ha, "")
	// Listening on all of the host's addresses, the simulators tell the
	// test (outside the namespaces) which of them generates.
	simArgs := append([]string{"--host", "0.0.0.0"}, migSimArgs...)
	b := nc.node(hb, a.gossipAddr, nc.sim(hb, "m", simArgs...)...)
	c := nc.node(hc, a.gossipAddr, nc.sim(hc, "m", simArgs...)...)
	hosts := map[string]*netlab.Host{"b": hb, "c": hc}
	all := []*proc{a, b, c}
	nc.waitConverged(all, 30*time.Second)
	mc := &migCluster{cluster: nc.cluster, e: a}
	mc.waitSlots(t, 8)
	var gaps []time.Duration
	api := migAPIs[0]
	for trial := range trials {
		var cut *netlab.Host
		s := mc.stream(t, api, fmt.Sprintf("cut %d", trial), migKillAt, func() {
			for name, h := range hosts {
				var st sim.Stats
				if getJSONURL("http://"+h.Addr(netSimPort)+"/rbee/sim/stats", &st) == nil && st.Active > 0 {
					cut = h
					t.Logf("trial %d: cutting %s", trial, name)
					h.Cut()
					return
				}
			}
			t.Errorf("trial %d: no simulator generating", trial)
		})
		if cut == nil {
			t.FailNow()
		}
		checkOneStream(t, api, s, sim.Text(migTokens))
		gaps = append(gaps, s.maxGap())
		cut.Heal()
		nc.waitConverged(all, 60*time.Second)
		mc.waitSlots(t, 8)
	}
	return gaps
}

// BenchmarkMigrationPause measures the pause a client sees when its
// stream is migrated, p50 and max over RBEE_MIGRATION_TRIALS trials
// (default 10): the serving hive SIGKILLed (the entry node sees the
// connection reset), and in network namespaces its link cut (the entry node
// waits for failure detection). The pause is the longest wait between two
// tokens of the stream; without a fault it is one token's time, 20 ms.
func BenchmarkMigrationPause(b *testing.B) {
	trials := 10
	if v, err := strconv.Atoi(os.Getenv("RBEE_MIGRATION_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	b.Run("sigkill", func(b *testing.B) {
		for range b.N {
			reportPauses(b, "sigkill", killTrials(b, trials))
		}
	})
	b.Run("cut", func(b *testing.B) {
		if err := netlab.Available(); err != nil {
			b.Skipf("network namespaces: %v", err)
		}
		d := gossip.LANTiming().Detection(3)
		b.Logf("failure detection (lan, 3 members): expected %v, worst %v", d.Expected, d.Worst)
		for range b.N {
			reportPauses(b, "cut", migrateAcrossCut(b, trials))
		}
	})
}

func reportPauses(b *testing.B, what string, gaps []time.Duration) {
	slices.Sort(gaps)
	p50, worst := gaps[len(gaps)/2], gaps[len(gaps)-1]
	b.ReportMetric(float64(p50.Milliseconds()), "pause-p50-ms")
	b.ReportMetric(float64(worst.Milliseconds()), "pause-max-ms")
	b.Logf("%s: %d trials, client's pause p50 %v, max %v (all: %v)", what, len(gaps), p50, worst, gaps)
}

// killTrials streams trials answers through an entry node, SIGKILLing the
// serving hive of each mid-way and restarting it after.
func killTrials(tb testing.TB, trials int) []time.Duration {
	mc := newMigCluster(tb, 2, 1)
	api := migAPIs[0]
	var gaps []time.Duration
	for trial := range trials {
		killed := -1
		s := mc.stream(tb, api, fmt.Sprintf("kill %d", trial), migKillAt, func() {
			killed, _ = mc.serving(tb)
			mc.kill(mc.hives[killed].node)
		})
		checkOneStream(tb, api, s, sim.Text(migTokens))
		gaps = append(gaps, s.maxGap())
		// The hive comes back under a new name: memberlist keeps a
		// dead member's name from a newcomer for a while.
		mc.waitSlots(tb, 4)
		h := mc.hives[killed]
		h.spec.name = fmt.Sprintf("h%d-%d", killed, trial+1)
		h.node = mc.start(h.spec)[0]
		mc.waitSlots(tb, 8)
	}
	return gaps
}

// TestMigration_NonStreamAskedAgain: a request that does not stream has
// had nothing when its hive dies; it is asked again whole of another
// worker, and the client gets the whole answer.
func TestMigration_NonStreamAskedAgain(t *testing.T) {
	t.Parallel()
	mc := newMigCluster(t, 2, 1)
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		body := fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"whole"}],"max_tokens":%d}`, migTokens)
		req, _ := http.NewRequest(http.MethodPost, "http://"+mc.e.httpAddr+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+mc.key.HTTPToken())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, string(b), err}
	}()
	h, _ := mc.serving(t)
	mc.kill(mc.hives[h].node)
	r := <-done
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("status %d, err %v: %s", r.status, r.err, r.body)
	}
	var v struct {
		Choices []struct{ Message struct{ Content string } }
	}
	if err := json.Unmarshal([]byte(r.body), &v); err != nil || len(v.Choices) != 1 || v.Choices[0].Message.Content != sim.Text(migTokens) {
		t.Fatalf("answer %s (%v), want the whole text", r.body, err)
	}
}

// TestMigration_QueenHiveKilled: the node killed is the queen and the hive
// serving the stream at once, as in `rbee demo` when its queen is killed.
// The continuation waits for the new queen's lease, then goes on from the
// other hive.
func TestMigration_QueenHiveKilled(t *testing.T) {
	t.Parallel()
	mc := &migCluster{cluster: newCluster(t)}
	var hives []*migHive
	for i := range 2 {
		s, addr := mc.startSim(t, fmt.Sprintf("sim%d", i))
		hives = append(hives, &migHive{sims: []*proc{s}, addrs: []string{addr}})
	}
	// q1 is queen (the higher priority) and a hive; q2 takes over.
	q1 := mc.start(nodeSpec{name: "q1", extra: []string{"--roles", "queen,hive", "--queen-priority", "1", "--worker", hives[0].addrs[0] + ",model=m,slots=4"}})[0]
	ps := mc.start(
		nodeSpec{name: "q2", join: q1.gossipAddr, extra: []string{"--roles", "queen,hive", "--worker", hives[1].addrs[0] + ",model=m,slots=4"}},
		nodeSpec{name: "e", join: q1.gossipAddr, extra: []string{"--roles", "none"}})
	hives[0].node, hives[1].node, mc.e = q1, ps[0], ps[1]
	mc.hives = hives
	if q := mc.waitAgree([]*proc{q1, ps[0], ps[1]}, 20*time.Second); q != "q1" {
		t.Fatalf("queen %s, want q1", q)
	}
	mc.waitSlots(t, 8)
	api := migAPIs[0]
	for i := 0; ; i++ {
		killed := false
		s := mc.stream(t, api, fmt.Sprintf("queen %d", i), migKillAt, func() {
			if h, _ := mc.serving(t); h == 0 {
				mc.kill(q1)
				killed = true
			}
		})
		checkOneStream(t, api, s, sim.Text(migTokens))
		if killed {
			t.Logf("queen and hive q1 SIGKILLed after %d tokens; the client's longest wait between tokens: %v", migKillAt, s.maxGap().Round(time.Millisecond))
			return
		}
		if i == 10 {
			t.Fatal("q1's worker never served a stream")
		}
	}
}

// TestMigration_Clients: the official openai npm client and the Vercel AI
// SDK read streams (chat completions and the Responses API) whose hive is
// SIGKILLed mid-way; neither raises, and each gets the whole answer.
func TestMigration_Clients(t *testing.T) {
	for _, tc := range []struct{ client, pkg string }{{"openai-client", "openai"}, {"ai-sdk-client", "ai"}} {
		t.Run(tc.client, func(t *testing.T) {
			t.Parallel()
			nodeBin, dir := nodeClient(t, tc.client, tc.pkg)
			mc := newMigCluster(t, 3, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, nodeBin, filepath.Join(dir, "migrate.mjs"), "http://"+mc.e.httpAddr+"/v1", "m",
				strconv.Itoa(migTokens), strconv.Itoa(migKillAt))
			cmd.Env = append(os.Environ(), "RBEE_API_KEY="+mc.key.HTTPToken())
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(out)
			var lines []string
			texts := 0
			for sc.Scan() {
				line := sc.Text()
				lines = append(lines, line)
				switch {
				case strings.HasPrefix(line, "CUT "):
					h, _ := mc.serving(t)
					mc.kill(mc.hives[h].node)
				case strings.HasPrefix(line, "TEXT "):
					texts++
					name, js, _ := strings.Cut(strings.TrimPrefix(line, "TEXT "), " ")
					var v struct {
						Text       string
						Final      *string
						Completion int
						Created    *int
						IDs        []string `json:"ids"`
					}
					if err := json.Unmarshal([]byte(js), &v); err != nil {
						t.Fatalf("%s: %q: %v", name, line, err)
					}
					if v.Text != sim.Text(migTokens) || (v.Final != nil && *v.Final != v.Text) {
						t.Errorf("%s: text %q (final %v), want the whole answer", name, v.Text, v.Final)
					}
					if v.Completion != migTokens || (v.Created != nil && *v.Created != 1) || len(v.IDs) > 1 {
						t.Errorf("%s: %s; want %d completion tokens, one response, one id", name, js, migTokens)
					}
				}
			}
			if err := cmd.Wait(); err != nil || texts != 2 || lines[len(lines)-1] != "OK" {
				t.Fatalf("%s: %v, %d answers\nstdout:\n%s\nstderr:\n%s", tc.client, err, texts, strings.Join(lines, "\n"), stderr.String())
			}
			t.Logf("%s:\n%s", tc.client, strings.Join(lines, "\n"))
			if got := strings.Count(mc.e.log(), `msg="stream migrated"`); got != 2 {
				t.Errorf("%d migrations logged, want 2", got)
			}
		})
	}
}

// nodeClient finds node and testdata/<client> with its npm package pkg
// installed; without them the test skips saying what to run, or fails when
// RBEE_REQUIRE_NODE is set (as in CI).
func nodeClient(t *testing.T, client, pkg string) (nodeBin, dir string) {
	t.Helper()
	dir, _ = filepath.Abs(filepath.Join("..", "..", "testdata", client))
	nodeBin, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json"))
	}
	if err != nil {
		msg := "node or the " + pkg + " package missing (run: npm ci --prefix testdata/" + client + "): " + err.Error()
		if os.Getenv("RBEE_REQUIRE_NODE") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return nodeBin, dir
}
