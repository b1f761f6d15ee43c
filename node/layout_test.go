package node_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const mod = "github.com/rbee/rbee/"

// layoutRules are the rooms' walls: which rbee packages each room (a package
// and those below it) may import, test files included. allow lists all it
// may import (nil: any but ban); ban lists what it must never import, each
// with those below it, except "node" itself (whose subpackages are the
// rooms).
var layoutRules = []struct {
	room       string
	allow, ban []string
	why        string
}{
	{room: "node/proxy", ban: []string{"node", "node/queen", "node/hive"},
		why: "the data plane does not schedule and does not run workers: it sees the hive through WorkerEndpoints"},
	{room: "node/queen", ban: []string{"node", "node/proxy", "node/hive"},
		why: "the queen is not on the data path and sees hives only through their reports"},
	{room: "node/hive", ban: []string{"node", "node/proxy", "node/queen"},
		why: "a hive sees the data plane only through hive.Leases, the queen only through the node's session"},
	{room: "node/api", allow: []string{"wsapi"},
		why: "the CLI reads the cluster through node/api without linking the server"},
	{room: "node/usage", allow: []string{"wsapi"},
		why: "the usage ledger is a leaf: the data plane records into it, never the other way"},
	{room: "scheduler", allow: []string{"internal/backoff", "internal/spareid"},
		why: "the scheduler is pure logic: no I/O, no goroutines, no clock"},
	{room: "internal/spareid", allow: []string{},
		why: "the spelling of a spare lease's use ids is a leaf that the wire protocol and the scheduler share"},
	{room: "internal/termview", allow: []string{"node/api", "wsapi", "scheduler", "internal/testutil"},
		why: "rendering turns the API's documents into text; it never links the server"},
	{room: "internal/launcher", allow: []string{"internal/testutil"},
		why: "the process launcher serves the demo, the tests and the benchmarks alike, knowing none of them"},
	{room: "internal/sim", allow: []string{"internal/testutil"},
		why: "the simulator is a stand-in worker, not part of a node"},
}

func TestLayout_RoomsImportOnlyWhatTheyMay(t *testing.T) {
	for _, rule := range layoutRules {
		dir := filepath.Join("..", filepath.FromSlash(rule.room))
		if rule.room == "node" || strings.HasPrefix(rule.room, "node/") {
			dir = filepath.FromSlash(strings.TrimPrefix(strings.TrimPrefix(rule.room, "node"), "/"))
		}
		files := 0
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
				return err
			}
			files++
			af, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
			if err != nil {
				return err
			}
			for _, imp := range af.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				own, ok := strings.CutPrefix(p, mod)
				if !ok {
					continue
				}
				if bad := breaks(rule.room, own, rule.allow, rule.ban); bad {
					t.Errorf("%s imports %s: %s", path, p, rule.why)
				}
			}
			return nil
		})
		if err != nil || files == 0 {
			t.Fatalf("room %s: %d Go files under %s: %v", rule.room, files, dir, err)
		}
	}
}

// breaks reports whether a file of room may not import the rbee package own.
func breaks(room, own string, allow, ban []string) bool {
	if own == room || strings.HasPrefix(own, room+"/") {
		return false // within the room
	}
	if allow != nil {
		for _, a := range allow {
			if own == a {
				return false
			}
		}
		return true
	}
	for _, b := range ban {
		if own == b || (b != "node" && strings.HasPrefix(own, b+"/")) {
			return true
		}
	}
	return false
}
