package gossip

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// snapshot is what a node remembers of its cluster across restarts: the
// gossip addresses of the members it knew.
type snapshot struct {
	Members []snapshotMember `json:"members"`
}

type snapshotMember struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
}

// maxSnapshotBytes bounds what is read back: a few thousand members.
const maxSnapshotBytes = 4 << 20

func readSnapshot(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) > maxSnapshotBytes {
		return nil, fmt.Errorf("%s: %d bytes, at most %d", path, len(b), maxSnapshotBytes)
	}
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []string
	for _, m := range s.Members {
		if m.Addr != "" && !slices.Contains(out, m.Addr) {
			out = append(out, m.Addr)
		}
	}
	return out, nil
}

// writeSnapshot saves the members this node knows (live ones and failed ones
// it still redials) when they changed, atomically: a crash mid-write leaves
// the previous snapshot.
func (g *Gossip) writeSnapshot() {
	if g.cfg.SnapshotPath == "" {
		return
	}
	g.mu.Lock()
	if !g.snapDirty {
		g.mu.Unlock()
		return
	}
	g.snapDirty = false
	var s snapshot
	for _, set := range []map[string]Member{g.live, g.departed} {
		for name, m := range set {
			if name == g.cfg.Name || m.Status == StatusLeft || m.GossipAddr == "" {
				continue
			}
			s.Members = append(s.Members, snapshotMember{Name: name, Addr: m.GossipAddr})
		}
	}
	g.mu.Unlock()
	slices.SortFunc(s.Members, func(a, b snapshotMember) int { return strings.Compare(a.Name, b.Name) })
	if err := writeFileAtomic(g.cfg.SnapshotPath, s); err != nil {
		g.log.Warn("write member snapshot", "path", g.cfg.SnapshotPath, "err", err)
		g.mu.Lock()
		g.snapDirty = true
		g.mu.Unlock()
	}
}

func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".members-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
