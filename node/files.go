package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/hive/models"
	"github.com/rbee/rbee/node/hive/transfer"
	"github.com/rbee/rbee/node/proxy"
)

// handleModelFiles lists a catalog model's files, sizes and SHA-256 for a
// peer that copies it: GET /v1/hive/files/{model}.
func (n *Node) handleModelFiles(w http.ResponseWriter, r *http.Request) {
	if n.hive == nil {
		proxy.WriteError(w, http.StatusNotFound, "not_found", "this node is not a hive")
		return
	}
	files, err := n.hive.ModelFiles(r.PathValue("model"))
	if err != nil {
		modelFileError(w, err)
		return
	}
	proxy.WriteJSON(w, struct {
		Model string             `json:"model"`
		Files []models.ModelFile `json:"files"`
	}{r.PathValue("model"), files})
}

// handleModelFile serves one file of a catalog model, with ranges (a copy
// that broke off resumes, several peers serve parts of one file): GET
// /v1/hive/files/{model}/{path...}.
func (n *Node) handleModelFile(w http.ResponseWriter, r *http.Request) {
	if n.hive == nil {
		proxy.WriteError(w, http.StatusNotFound, "not_found", "this node is not a hive")
		return
	}
	f, err := n.hive.OpenModelFile(r.PathValue("model"), r.PathValue("path"))
	if err != nil {
		modelFileError(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		proxy.WriteError(w, http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

func modelFileError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, models.ErrNoModel), errors.Is(err, hive.ErrNoCatalog), errors.Is(err, fs.ErrNotExist):
		proxy.WriteError(w, http.StatusNotFound, "not_found", err.Error())
	default:
		proxy.WriteError(w, http.StatusInternalServerError, "server_error", err.Error())
	}
}

// handleModelCopy copies a model from the hives that hold it into this
// node's models folder: POST /v1/admin/models/copy {"model": NAME}. The
// answer streams newline-delimited JSON: {"progress": ...} about twice a
// second (and every few seconds while the peers hash the files), then
// {"done": ...} or {"error": "..."}. The copy ends with the request: a
// client that goes away stops it, and the next one resumes it.
func (n *Node) handleModelCopy(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model string `json:"model"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Model == "" {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", `want {"model": NAME}`)
		return
	}
	switch {
	case n.hive == nil || n.hive.ModelsDir() == "":
		proxy.WriteError(w, http.StatusConflict, "no_models_dir", "node "+n.cfg.Name+" has no --models-dir to copy models into")
		return
	case n.hive.HasModel(req.Model):
		proxy.WriteError(w, http.StatusConflict, "model_exists", "model "+proxy.TruncateText(req.Model, 200)+" is in "+n.cfg.Name+"'s catalog already")
		return
	}
	n.copyMu.Lock()
	if n.copying[req.Model] {
		n.copyMu.Unlock()
		proxy.WriteError(w, http.StatusConflict, "copy_running", "model "+proxy.TruncateText(req.Model, 200)+" is being copied to "+n.cfg.Name+" already")
		return
	}
	n.copying[req.Model] = true
	n.copyMu.Unlock()
	defer func() {
		n.copyMu.Lock()
		delete(n.copying, req.Model)
		n.copyMu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	out := &ndjson{w: w, rc: http.NewResponseController(w)}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		// The peers hash a file before they list it (once per version):
		// the client hears from the copy meanwhile.
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				out.line(map[string]any{"waiting": "for the peers' listing or the next block"})
			}
		}
	})
	res, err := n.copyModel(ctx, req.Model, func(p transfer.Progress) { out.line(map[string]any{"progress": p}) })
	cancel()
	wg.Wait()
	if err != nil {
		n.log.Warn("model copy failed", "model", req.Model, "err", err)
		out.line(map[string]any{"error": err.Error()})
		return
	}
	out.line(map[string]any{"done": map[string]any{"model": res.Name, "path": res.Path, "bytes": res.Bytes, "fetched": res.Fetched,
		"refetched": res.Refetched, "node": n.cfg.Name}})
}

// ndjson writes one JSON value a line, flushed, from several goroutines.
type ndjson struct {
	mu sync.Mutex
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (o *ndjson) line(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, err := o.w.Write(append(b, '\n')); err == nil {
		_ = o.rc.Flush()
	}
}
