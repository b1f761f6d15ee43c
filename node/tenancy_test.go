package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/node/proxy"
)

// tenant is one [[key]] of a keys file.
type tenant struct {
	name, key string
	models    []string // globs; none: every model
}

// withKeysFile writes the keys file of ts and starts the node with it.
func withKeysFile(t testing.TB, ts ...tenant) nodetest.Option {
	t.Helper()
	var b strings.Builder
	for _, tn := range ts {
		fmt.Fprintf(&b, "[[key]]\nname = %q\nkey = %q\n", tn.name, tn.key)
		if len(tn.models) > 0 {
			fmt.Fprintf(&b, "models = [%q]\n", strings.Join(tn.models, `", "`))
		}
	}
	path := filepath.Join(t.TempDir(), "keys.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(cfg *node.Config) { cfg.APIKeysFile = path }
}

// sendAs POSTs body to path on addr with bearer key (none when empty) and
// the headers hdr (name, value, ...).
func sendAs(ctx context.Context, addr, path, key, body string, hdr ...string) (apiResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return apiResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return apiResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, body: string(b), header: resp.Header}, err
}

// getAs GETs path on addr with bearer key.
func getAs(addr, path, key string) (apiResult, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return apiResult{}, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return apiResult{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, body: string(b), header: resp.Header}, err
}

// TestTenants_ConversationsAreScopedByKey: another key sending bob's
// X-Session-Id names another conversation, so it cannot move bob's turns
// off the worker that served his last one.
func TestTenants_ConversationsAreScopedByKey(t *testing.T) {
	w1, w2 := newFakeWorker(t, "w1"), newFakeWorker(t, "w2")
	const bob, mallory = "sk-bob-000001", "sk-mallory-01"
	a := nodetest.Start(t, "a", nodetest.WithCollector(workersOf("m", 1, w1, w2)),
		withKeysFile(t, tenant{name: "bob", key: bob}, tenant{name: "mallory", key: mallory}),
		func(cfg *node.Config) { cfg.AffinityWait = 200 * time.Millisecond })
	testutil.Eventually(t, 10*time.Second, "both workers known", func() error {
		if qs := mustQueues(a); len(qs) != 1 || qs[0].Slots != 2 {
			return fmt.Errorf("queues %+v", qs)
		}
		return nil
	})
	ctx := context.Background()
	turn := func(key string) (string, error) {
		r, err := sendAs(ctx, a.HTTPAddr(), api.PathChat, key, chat("m", false), proxy.HeaderSessionID, "conv-1")
		if err != nil || r.status != http.StatusOK {
			return "", fmt.Errorf("%d %q %v", r.status, r.body, err)
		}
		for _, w := range []*fakeWorker{w1, w2} {
			if strings.Contains(r.body, "hello from "+w.name) {
				return w.name, nil
			}
		}
		return "", fmt.Errorf("answer %q names no worker", r.body)
	}
	first, err := turn(bob)
	if err != nil {
		t.Fatal(err)
	}
	pinned, other := w1, w2
	if first == "w2" {
		pinned, other = w2, w1
	}
	// Bob's next turn holds his worker's one slot; mallory sends bob's
	// session id meanwhile. Sharing bob's conversation, it would wait for
	// his worker, give up after the affinity wait, be served by the other
	// and move the conversation there.
	pinned.setHold(true)
	held := make(chan error, 1)
	go func() {
		got, err := turn(bob)
		if err == nil && got != pinned.name {
			err = fmt.Errorf("bob's second turn went to %s, want %s", got, pinned.name)
		}
		held <- err
	}()
	pinned.waitInFlight(t, 1)
	if got, err := turn(mallory); err != nil || got != other.name {
		t.Fatalf("mallory's turn: %s %v, want %s", got, err, other.name)
	}
	pinned.setHold(false)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got, err := turn(bob); err != nil || got != pinned.name {
			t.Fatalf("bob's turn %d after mallory's: %s %v, want his worker %s", i+3, got, err, pinned.name)
		}
	}
}

// TestTenants_ClusterTokenIsNoInferenceKey: where a keys file is in force,
// the cluster token gets a 401 that says why at the inference API, while it
// still reads the cluster; a key from the file is served all the way from an
// entry-only node through the queen's lease to another hive, over the
// cluster's TLS.
func TestTenants_ClusterTokenIsNoInferenceKey(t *testing.T) {
	key := mustKey(t)
	w1 := newFakeWorker(t, "w1")
	keys := withKeysFile(t, tenant{name: "bob", key: "sk-bob-000001"})
	a, _, c := routeCluster(t, endpointCollector{}, workersOf("m", 1, w1), nodetest.WithKey(key), keys)
	ctx := context.Background()
	for _, stream := range []bool{false, true} {
		r, err := sendAs(ctx, c.HTTPAddr(), api.PathChat, "sk-bob-000001", chat("m", stream))
		if err != nil || r.status != http.StatusOK || !strings.Contains(r.body, "w1") && !strings.Contains(r.body, "tok2") {
			t.Fatalf("stream=%v with bob's key through an entry-only node to another hive: %d %q %v", stream, r.status, r.body, err)
		}
	}
	token := key.HTTPToken()
	for _, entry := range []*nodetest.Node{a, c} {
		for _, path := range []string{api.PathChat, api.PathEmbeddings} {
			r, err := sendAs(ctx, entry.HTTPAddr(), path, token, chat("m", false))
			if err != nil || r.status != http.StatusUnauthorized ||
				!strings.Contains(r.body, `"code":"invalid_api_key"`) || !strings.Contains(r.body, "--api-keys-file") {
				t.Fatalf("%s on %s with the cluster token: %d %q %v, want a 401 naming the keys file", path, entry.Name(), r.status, r.body, err)
			}
		}
	}
	// The token still reads the cluster and lists its models.
	for _, path := range []string{api.PathModels, api.PathCluster, "/metrics"} {
		if r, err := getAs(c.HTTPAddr(), path, token); err != nil || r.status != http.StatusOK {
			t.Fatalf("GET %s with the cluster token: %d %q %v", path, r.status, r.body, err)
		}
	}
	if w1.served.Load() != 2 {
		t.Fatalf("worker served %d requests, want bob's 2 only", w1.served.Load())
	}
}

// TestTenants_ModelsListShowsWhatTheKeyMayUse: a key limited to some
// models sees only those in /v1/models and /v1/models/{m} (404 for the
// rest, which would answer it 403); globs cross the / of hub names and
// ignore case.
func TestTenants_ModelsListShowsWhatTheKeyMayUse(t *testing.T) {
	w1, w2 := newFakeWorker(t, "w1"), newFakeWorker(t, "w2")
	keys := withKeysFile(t, tenant{name: "bob", key: "sk-bob-000001", models: []string{"acme*"}}, tenant{name: "all", key: "sk-all-000001"})
	a, _, _ := routeCluster(t, workersOf("Acme/Tiny-GGUF", 1, w1), workersOf("other", 1, w2), keys)
	ids := func(key string) []string {
		r, err := getAs(a.HTTPAddr(), api.PathModels, key)
		if err != nil || r.status != http.StatusOK {
			t.Fatalf("models as %s: %d %q %v", key, r.status, r.body, err)
		}
		var v struct{ Data []struct{ ID string } }
		if err := json.Unmarshal([]byte(r.body), &v); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range v.Data {
			out = append(out, m.ID)
		}
		slices.Sort(out)
		return out
	}
	if got := ids("sk-bob-000001"); !slices.Equal(got, []string{"Acme/Tiny-GGUF"}) {
		t.Errorf("bob sees %v, want Acme/Tiny-GGUF alone", got)
	}
	if got := ids("sk-all-000001"); !slices.Equal(got, []string{"Acme/Tiny-GGUF", "other"}) {
		t.Errorf("a key without limits sees %v", got)
	}
	if r, err := getAs(a.HTTPAddr(), api.PathModels+"/other", "sk-bob-000001"); err != nil || r.status != http.StatusNotFound {
		t.Errorf("bob asks for other: %d %v, want 404", r.status, err)
	}
	if r, err := sendAs(context.Background(), a.HTTPAddr(), api.PathChat, "sk-bob-000001", chat("acme/tiny-gguf", false)); err != nil || r.status != http.StatusOK {
		t.Errorf("bob's request for his model, in another case: %d %q %v", r.status, r.body, err)
	}
}
