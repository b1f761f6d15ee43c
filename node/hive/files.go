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
