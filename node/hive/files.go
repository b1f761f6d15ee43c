package hive

import (
	"errors"
	"os"

	"github.com/rbee/rbee/node/hive/models"
)

// ErrNoCatalog is returned for model files on a hive without a catalog.
var ErrNoCatalog = errors.New("this hive has no model catalog (--model, --models-dir)")

// ModelFiles lists the files of model name in this hive's catalog, with
// their sizes and SHA-256, for a peer that copies the model.
func (a *Agent) ModelFiles(name string) ([]models.ModelFile, error) {
	if a.models == nil {
		return nil, ErrNoCatalog
	}
	return a.models.Files(name)
}

// OpenModelFile opens file rel of model name, one that ModelFiles lists.
func (a *Agent) OpenModelFile(name, rel string) (*os.File, error) {
	if a.models == nil {
		return nil, ErrNoCatalog
	}
	return a.models.Open(name, rel)
}

// ModelsDir is where models copied from other hives go, "" when this hive
// takes none (no --models-dir).
func (a *Agent) ModelsDir() string {
	if a.models == nil {
		return ""
	}
	return a.models.ModelsDir()
}

// HasModel reports whether this hive's catalog has a model called name.
func (a *Agent) HasModel(name string) bool { return a.models != nil && a.models.Has(name) }

// AddCopied adds a model copied into the models folder to the catalog.
func (a *Agent) AddCopied(name, path, engine string, slots, ctx int) error {
	if a.models == nil {
		return ErrNoCatalog
	}
	return a.models.AddCopied(name, path, engine, slots, ctx)
}

// RemoveLocal takes a model of the models folder out of the catalog and
// deletes its files.
func (a *Agent) RemoveLocal(name string) (string, error) {
	if a.models == nil {
		return "", ErrNoCatalog
	}
	return a.models.RemoveLocal(name)
}
