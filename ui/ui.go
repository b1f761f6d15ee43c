// Package ui is the dashboard: static files embedded in the binary and served
// by every node, with no build step and nothing fetched from the network.
//
// The page (static/) reads GET /v1/cluster once and then every few seconds,
// and the WebSocket feed at /v1/heartbeats/stream continuously, in a Web
// Worker (static/worker.js, static/engine.js) that parses them, keeps the
// cluster in plain objects (static/model.js) and sends the page, ten times a
// second at most, the summary and the hives on or near the screen; the page
// renders what changed once per animation frame (static/view.js), for those
// hives only: the others are left out of the DOM, their heights kept as
// padding, so that a cluster of 1000 hives costs little more than a
// screenful. When its feed
// closes it reconnects with backoff, to its own node first and then to the
// other members (static/feed.js).
//
// Its tests drive a real Chromium against in-process nodes; see
// browser_test.go.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// contentSecurityPolicy: scripts, styles and images only from the node itself,
// so that even a bug that put a hive's text into markup could not run script.
// connect-src stays open to http/ws: after a failover the page reads another
// member's feed, whose address it learns at run time. worker-src names the
// page's one worker (static/worker.js, which reads the feed) though
// default-src would allow it too, so that a tighter default-src cannot stop
// it by surprise.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; worker-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' http: https: ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the dashboard at / and its assets under /ui/.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		switch {
		case r.URL.Path == "/":
			http.ServeFileFS(w, r, sub, "index.html")
		case strings.HasPrefix(r.URL.Path, "/ui/") && len(r.URL.Path) > len("/ui/"):
			r2 := r.Clone(r.Context())
			r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/ui")
			files.ServeHTTP(w, r2)
		default:
			http.NotFound(w, r)
		}
	})
}
