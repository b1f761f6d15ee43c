package node_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The queen is not on the data path, and the data plane does not schedule:
// node/proxy and node/queen never import each other, nor node (which imports
// both).
func TestLayout_PlanesDoNotImportEachOther(t *testing.T) {
	const mod = "github.com/rbee/rbee/"
	for dir, banned := range map[string][]string{
		"proxy": {mod + "node/queen", mod + "node"},
		"queen": {mod + "node/proxy", mod + "node"},
	} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go files in node/%s: %v", dir, err)
		}
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				for _, b := range banned {
					if path == b || (strings.HasPrefix(path, b+"/") && b != mod+"node") {
						t.Errorf("%s imports %s", f, path)
					}
				}
			}
		}
	}
}
