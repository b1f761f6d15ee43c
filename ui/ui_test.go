package ui_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/rbee/rbee/ui"
)

func get(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestHandler_ServesPageAndAssetsWithSafeHeaders(t *testing.T) {
	h := ui.Handler()
	for _, tc := range []struct {
		path, status, ctype string
	}{
		{"/", "200 OK", "text/html"},
		{"/ui/app.js", "200 OK", "text/javascript"},
		{"/ui/style.css", "200 OK", "text/css"},
		{"/ui/", "404 Not Found", ""},
		{"/nope", "404 Not Found", ""},
		{"/ui/missing.js", "404 Not Found", ""},
	} {
		res, _ := get(t, h, tc.path)
		if res.Status != tc.status {
			t.Errorf("GET %s: %s, want %s", tc.path, res.Status, tc.status)
		}
		if tc.ctype != "" && !strings.HasPrefix(res.Header.Get("Content-Type"), tc.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, res.Header.Get("Content-Type"), tc.ctype)
		}
		for _, k := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Cache-Control"} {
			if k == "Cache-Control" && res.StatusCode != http.StatusOK {
				continue // net/http drops it from its error replies
			}
			if res.Header.Get(k) == "" {
				t.Errorf("GET %s: no %s header", tc.path, k)
			}
		}
	}
}

// TestHandler_EveryReferencedAssetIsServed follows the page's references
// (stylesheet, module script, ES module imports) without a browser, so a
// renamed file fails here and not only in the browser test.
func TestHandler_EveryReferencedAssetIsServed(t *testing.T) {
	h := ui.Handler()
	_, index := get(t, h, "/")
	ref := regexp.MustCompile(`(?:href|src)="(/ui/[^"]+)"`)
	imp := regexp.MustCompile(`(?m)^import .* from '\./([^']+)';|\bimport\('\./([^']+)'\)`)
	// The page's worker, and what it imports, are reached the same way.
	wrk := regexp.MustCompile(`new Worker\('(/ui/[^']+)'`)
	todo := []string{}
	for _, m := range ref.FindAllStringSubmatch(index, -1) {
		todo = append(todo, m[1])
	}
	if len(todo) < 2 {
		t.Fatalf("index.html references %v, want the stylesheet and app.js", todo)
	}
	seen := map[string]bool{}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		res, body := get(t, h, p)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", p, res.Status)
			continue
		}
		if strings.HasSuffix(p, ".js") {
			for _, m := range imp.FindAllStringSubmatch(body, -1) {
				todo = append(todo, "/ui/"+m[1]+m[2])
			}
			for _, m := range wrk.FindAllStringSubmatch(body, -1) {
				todo = append(todo, m[1])
			}
		}
	}
	for _, want := range []string{"/ui/app.js", "/ui/worker.js", "/ui/engine.js", "/ui/model.js", "/ui/view.js", "/ui/feed.js", "/ui/format.js", "/ui/spark.js", "/ui/style.css"} {
		if !seen[want] {
			t.Errorf("%s is not reached from index.html (reached %v)", want, seen)
		}
	}
}
