package proxy

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/rbee/rbee/node/api"
)

// ownPaths are rbee's own paths under /v1/ (and below them): never routed to
// a worker, whatever the method.
var ownPaths = []string{"/v1/admin", "/v1/hive", api.PathHiveHeartbeat, "/v1/heartbeats", api.PathCluster, api.PathModels}

// knownPaths are the OpenAI-style paths (besides /v1/models) that llama-server,
// vLLM and OpenAI serve by POST: another method on them gets a 405 naming
// POST, where an unknown path gets a 404.
var knownPaths = []string{
	api.PathChat, api.PathCompletions, api.PathEmbeddings, api.PathResponses,
	"/v1/rerank", "/v1/reranking", "/v1/score", "/v1/moderations",
	"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech",
	"/v1/images/generations", "/v1/images/edits", "/v1/images/variations",
}

// maxInferencePath bounds a routed path: OpenAI's longest is a few dozen
// bytes.
const maxInferencePath = 256

// InferencePath reports whether path is an OpenAI-style call an entry node
// routes to a worker (POST, the body naming a model): any path under /v1/
// that is not rbee's own (/v1/admin/..., /v1/hive/..., /v1/heartbeats/...,
// /v1/cluster, /v1/models), made of letters, digits and - _ . / without
// empty or dot segments. Entry and hive end apply the same rule: the hive
// passes on to a worker only what an entry node would have routed.
func InferencePath(path string) bool {
	rest, ok := strings.CutPrefix(path, "/v1/")
	if !ok || rest == "" || len(path) > maxInferencePath {
		return false
	}
	for _, own := range ownPaths {
		if path == own || strings.HasPrefix(path, own+"/") {
			return false
		}
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return !strings.ContainsFunc(rest, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == '/')
	})
}

// HandleAPI serves what falls under /v1/ besides rbee's own routes: an
// inference path (see InferencePath) by POST goes to post; a known one
// (chat completions, responses, ...) by any other method gets a 405 naming
// POST; anything else is not found.
func HandleAPI(post http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && InferencePath(r.URL.Path):
			post(w, r)
		case slices.Contains(knownPaths, r.URL.Path):
			MethodNotAllowed(http.MethodPost)(w, r)
		default:
			WriteError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route for %s %s", r.Method, TruncateText(r.URL.Path, 200)))
		}
	}
}

// MethodNotAllowed answers 405 with an Allow header listing allow.
func MethodNotAllowed(allow ...string) http.HandlerFunc {
	list := strings.Join(allow, ", ")
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", list)
		WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, TruncateText(r.URL.Path, 200), list))
	}
}
