package node

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/hive/models"
	"github.com/rbee/rbee/node/hive/pull"
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
// answer streams newline-delimited JSON (see modelJob).
func (n *Node) handleModelCopy(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model string `json:"model"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Model == "" {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", `want {"model": NAME}`)
		return
	}
	n.modelJob(w, r, req.Model, "copy "+req.Model, func(ctx context.Context, progress func(any)) (any, error) {
		res, err := n.copyModel(ctx, req.Model, func(p transfer.Progress) { progress(p) })
		if err != nil {
			return nil, err
		}
		return map[string]any{"model": res.Name, "path": res.Path, "bytes": res.Bytes, "fetched": res.Fetched,
			"refetched": res.Refetched, "node": n.cfg.Name}, nil
	})
}

// handleModelPull pulls a model from a Hugging Face hub or a URL into this
// node's models folder: POST /v1/admin/models/pull {"ref": REF, "endpoint":
// hub, "token": hub token}; endpoint and token default to the node's
// HF_ENDPOINT and HF_TOKEN. The answer streams as modelJob's.
func (n *Node) handleModelPull(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Ref      string `json:"ref"`
		Endpoint string `json:"endpoint"`
		Token    string `json:"token"`
		SHA256   string `json:"sha256"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Ref == "" {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", `want {"ref": "hf:ORG/REPO[:TAG]" or an https URL}`)
		return
	}
	ref, err := pull.ParseRef(req.Ref)
	if err != nil {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", err.Error())
		return
	}
	opts := pull.Options{Endpoint: cmp.Or(req.Endpoint, os.Getenv("HF_ENDPOINT")), Token: cmp.Or(req.Token, os.Getenv("HF_TOKEN")),
		SHA256: req.SHA256, Client: &http.Client{Transport: http.DefaultTransport}}
	n.modelJob(w, r, "", "pull "+ref.String(), func(ctx context.Context, progress func(any)) (any, error) {
		dir := n.hive.ModelsDir()
		opts.Progress = func(p pull.Progress) { progress(p) }
		start := time.Now()
		res, err := pull.Pull(ctx, ref, dir, opts)
		if err != nil {
			return nil, err
		}
		if err := n.hive.AddCopied(res.Name, res.Path, "", 0, 0); err != nil {
			return nil, err
		}
		n.log.Info("model pulled", "ref", ref.String(), "model", res.Name, "path", res.Path, "bytes", res.Bytes,
			"fetched", res.Fetched, "took", time.Since(start).Round(time.Millisecond))
		return map[string]any{"model": res.Name, "path": res.Path, "bytes": res.Bytes, "fetched": res.Fetched, "node": n.cfg.Name}, nil
	})
}

// handleModelRemove takes a model of this node's --models-dir out of its
// catalog and deletes its files: DELETE /v1/admin/models/{model}.
func (n *Node) handleModelRemove(w http.ResponseWriter, r *http.Request) {
	if n.hive == nil {
		proxy.WriteError(w, http.StatusNotFound, "not_found", "node "+n.cfg.Name+" is not a hive")
		return
	}
	path, err := n.hive.RemoveLocal(r.PathValue("model"))
	switch {
	case errors.Is(err, models.ErrNoModel), errors.Is(err, hive.ErrNoCatalog):
		proxy.WriteError(w, http.StatusNotFound, "not_found", err.Error())
		return
	case err != nil:
		proxy.WriteError(w, http.StatusConflict, "cannot_remove", err.Error())
		return
	}
	n.log.Info("model removed", "model", r.PathValue("model"), "path", path)
	proxy.WriteJSON(w, map[string]string{"model": r.PathValue("model"), "path": path, "node": n.cfg.Name})
}

// modelJob runs one pull or copy into this node's models folder for a
// client: model, when set, must not be in the catalog yet; what names the
// job (one at a time per what). The answer streams newline-delimited JSON:
// {"progress": ...} about twice a second (and {"waiting": ...} every few
// seconds while nothing moves: peers hash a file before they list it),
// then {"done": ...} or {"error": "..."}. The job ends with the request: a
// client that goes away stops it, and the next one resumes it.
func (n *Node) modelJob(w http.ResponseWriter, r *http.Request, model, what string, run func(ctx context.Context, progress func(any)) (any, error)) {
	switch {
	case n.hive == nil || n.hive.ModelsDir() == "":
		proxy.WriteError(w, http.StatusConflict, "no_models_dir", "node "+n.cfg.Name+" has no --models-dir to put models in")
		return
	case model != "" && n.hive.HasModel(model):
		proxy.WriteError(w, http.StatusConflict, "model_exists", "model "+proxy.TruncateText(model, 200)+" is in "+n.cfg.Name+"'s catalog already")
		return
	}
	n.copyMu.Lock()
	if n.copying[what] {
		n.copyMu.Unlock()
		proxy.WriteError(w, http.StatusConflict, "job_running", proxy.TruncateText(what, 300)+" is under way on "+n.cfg.Name+" already")
		return
	}
	n.copying[what] = true
	n.copyMu.Unlock()
	defer func() {
		n.copyMu.Lock()
		delete(n.copying, what)
		n.copyMu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	out := &ndjson{w: w, rc: http.NewResponseController(w)}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				out.line(map[string]any{"waiting": what})
			}
		}
	})
	done, err := run(ctx, func(p any) { out.line(map[string]any{"progress": p}) })
	cancel()
	wg.Wait()
	if err != nil {
		n.log.Warn("model job failed", "job", what, "err", err)
		out.line(map[string]any{"error": err.Error()})
		return
	}
	out.line(map[string]any{"done": done})
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
