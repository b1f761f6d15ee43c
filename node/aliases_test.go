package node_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/rbee/rbee/node/api"
)

// TestAliases_WorkersOwnNameIsServed: a worker the user named
// "llama-3.2-1b" whose own id is its file's name answers to both through any
// node; /v1/models lists the alias beside the name, and /v1/models/{alias}
// answers as itself, as llama-server would.
func TestAliases_WorkersOwnNameIsServed(t *testing.T) {
	w1, w2 := newFakeWorker(t, "w1"), newFakeWorker(t, "w2")
	named := workersOf("llama-3.2-1b", 1, w1)
	named.workers[0].Aliases = []string{"Llama-3.2-1B-Instruct-Q4_K_M.gguf"}
	_, _, c := routeCluster(t, named, workersOf("other", 1, w2))
	ctx := context.Background()
	for _, asked := range []string{"Llama-3.2-1B-Instruct-Q4_K_M.gguf", "llama-3.2-1b-instruct-q4_k_m", "llama-3.2-1b"} {
		r, err := post(ctx, c.HTTPAddr(), api.PathChat, chat(asked, false))
		if err != nil || r.status != http.StatusOK || !strings.Contains(r.body, "hello from w1") {
			t.Errorf("request for %q: %d %q %v, want w1's answer", asked, r.status, r.body, err)
		}
	}

	r, err := getAs(c.HTTPAddr(), api.PathModels, "")
	if err != nil || r.status != http.StatusOK {
		t.Fatalf("models: %d %q %v", r.status, r.body, err)
	}
	var list struct {
		Data []struct {
			ID      string   `json:"id"`
			Aliases []string `json:"aliases"`
		}
	}
	if err := json.Unmarshal([]byte(r.body), &list); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range list.Data {
		if m.ID == "llama-3.2-1b" {
			found = len(m.Aliases) == 1 && m.Aliases[0] == "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
		}
	}
	if !found {
		t.Errorf("/v1/models = %s, want llama-3.2-1b listing its alias", r.body)
	}

	r, err = getAs(c.HTTPAddr(), api.PathModels+"/llama-3.2-1b-instruct-Q4_K_M.gguf", "")
	var one struct {
		ID      string `json:"id"`
		AliasOf string `json:"alias_of"`
	}
	if err != nil || r.status != http.StatusOK || json.Unmarshal([]byte(r.body), &one) != nil ||
		one.ID != "llama-3.2-1b-instruct-Q4_K_M.gguf" || one.AliasOf != "llama-3.2-1b" {
		t.Errorf("/v1/models/{alias}: %d %q %v, want the alias, alias_of llama-3.2-1b", r.status, r.body, err)
	}
	if r, err := getAs(c.HTTPAddr(), api.PathModels+"/Llama-3.2-1B-Instruct", ""); err != nil || r.status != http.StatusNotFound {
		t.Errorf("/v1/models/{a spelling that is no alias}: %d %v, want 404", r.status, err)
	}
}
