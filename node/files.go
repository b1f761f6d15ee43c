package node

import (
	"errors"
	"io/fs"
	"net/http"

	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/hive/models"
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
