package node_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
)

// TestCORS: a browser page on this machine (any port) may call the API: its
// preflight is answered 204 with what it asked for, on every API path (the
// feed's too), and the answers name its origin; another site's preflight is
// refused, saying how to allow it; with --cors-origins "*" any origin is.
func TestCORS(t *testing.T) {
	w1 := newFakeWorker(t, "w1")
	a, _, _ := routeCluster(t, workersOf("m", 1, w1), endpointCollector{}, func(cfg *node.Config) { cfg.APIKeys = []string{"sk-one"} })
	preflight := func(addr, path, origin string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodOptions, "http://"+addr+path, nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type, x-stainless-os")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, path := range []string{api.PathChat, api.PathModels, api.PathResponses, api.PathFeed, api.PathCluster} {
		resp := preflight(a.HTTPAddr(), path, "http://localhost:5173")
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "http://localhost:5173" ||
			!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") ||
			resp.Header.Get("Access-Control-Allow-Headers") != "authorization, content-type, x-stainless-os" {
			t.Errorf("preflight of %s: %d %v", path, resp.StatusCode, resp.Header)
		}
	}
	if resp := preflight(a.HTTPAddr(), api.PathChat, "https://evil.example"); resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("another site's preflight: %d %v", resp.StatusCode, resp.Header)
	}
	// The request itself names the origin.
	req, _ := http.NewRequest(http.MethodPost, "http://"+a.HTTPAddr()+api.PathChat, strings.NewReader(chat("m", false)))
	req.Header.Set("Origin", "http://127.0.0.1:8080")
	req.Header.Set("Authorization", "Bearer sk-one")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "http://127.0.0.1:8080" {
		t.Errorf("POST from a local page: %d %v", resp.StatusCode, resp.Header)
	}

	any := nodetest.Start(t, "any", func(cfg *node.Config) { cfg.CORSOrigins = []string{"*"} })
	if resp := preflight(any.HTTPAddr(), api.PathChat, "https://app.example.com"); resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("--cors-origins '*': %d %v", resp.StatusCode, resp.Header)
	}
}

func TestCORSAllowed(t *testing.T) {
	for _, tc := range []struct {
		origin string
		want   bool
	}{
		{"http://localhost:5173", true}, {"http://localhost", true}, {"HTTP://LOCALHOST:3000", true},
		{"http://127.0.0.1:8080", true}, {"http://[::1]:9", true},
		{"http://localhost:80x", false}, {"http://localhost.evil.example", false}, {"https://evil.example", false},
		{"http://localhost:", false}, {"null", false},
	} {
		if got := node.CORSAllowed(node.DefaultCORSOrigins, tc.origin); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.origin, got, tc.want)
		}
	}
	if !node.CORSAllowed([]string{"https://app.example.com"}, "https://app.example.com") || node.CORSAllowed([]string{"https://app.example.com"}, "https://app.example.com:8443") {
		t.Error("an exact origin")
	}
}
