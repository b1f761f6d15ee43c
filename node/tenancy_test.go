package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/nodetest"
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
