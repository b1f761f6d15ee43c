package node

import (
	"context"
	"net/http"
	"strings"

	"github.com/rbee/rbee/node/proxy"
)

// DefaultCORSOrigins are the browser origins the API answers without
// --cors-origins: pages served from this machine (a local web UI, a dev
// server), as Ollama allows by default.
var DefaultCORSOrigins = []string{
	"http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
	"http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
	"http://[::1]", "https://[::1]", "http://[::1]:*", "https://[::1]:*",
}

// corsAllowed reports whether a browser page at origin may call the API:
// an origin listed exactly, one whose port a "scheme://host:*" pattern
// leaves open, or any with "*".
func corsAllowed(patterns []string, origin string) bool {
	origin = strings.ToLower(origin)
	for _, p := range patterns {
		p = strings.ToLower(p)
		switch {
		case p == "*" || p == origin:
			return true
		case strings.HasSuffix(p, ":*"):
			port, ok := strings.CutPrefix(origin, strings.TrimSuffix(p, "*"))
			if ok && port != "" && strings.Trim(port, "0123456789") == "" {
				return true
			}
		}
	}
	return false
}

// cors lets the browser pages of --cors-origins call the API: a preflight
// (OPTIONS with Access-Control-Request-Method) is answered 204 with what it
// asked for, and every answer to an allowed origin says so. Other origins
// get no CORS headers (the browser keeps the answer from the page), and
// their preflight a 403 saying why.
func (n *Node) cors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if origin == "" || !corsAllowed(n.cfg.CORSOrigins, origin) {
			if preflight {
				proxy.WriteError(w, http.StatusForbidden, "origin_not_allowed",
					"origin "+proxy.TruncateText(origin, 100)+" may not call this node from a browser (see --cors-origins)")
				return
			}
			h.ServeHTTP(w, r)
			return
		}
		hdr := w.Header()
		if len(n.cfg.CORSOrigins) == 1 && n.cfg.CORSOrigins[0] == "*" {
			hdr.Set("Access-Control-Allow-Origin", "*")
		} else {
			hdr.Set("Access-Control-Allow-Origin", origin)
			hdr.Add("Vary", "Origin")
		}
		if preflight {
			hdr.Set("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
			if asked := r.Header.Get("Access-Control-Request-Headers"); asked != "" {
				hdr.Set("Access-Control-Allow-Headers", asked)
			}
			hdr.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		hdr.Set("Access-Control-Expose-Headers", "Retry-After, X-Request-Id, Openai-Processing-Ms")
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), corsKey{}, true)))
	})
}

// corsKey marks a request from an allowed browser origin.
type corsKey struct{}

func fromAllowedOrigin(r *http.Request) bool {
	ok, _ := r.Context().Value(corsKey{}).(bool)
	return ok
}
