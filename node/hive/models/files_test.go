package models

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// TestFiles_ListsAndServesAModelsFiles: a folder model lists its regular
// files (a link to a blob, as the Hugging Face cache has, at its target's
// size; hidden files and half downloads left out) with their SHA-256; a
// one-file model is its file; a peer's path outside that list is refused.
func TestFiles_ListsAndServesAModelsFiles(t *testing.T) {
	dir := t.TempDir()
	folder := filepath.Join(dir, "qwen")
	blobs := filepath.Join(dir, "blobs")
	for _, d := range []string{folder, filepath.Join(folder, "sub"), filepath.Join(folder, ".cache"), blobs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string][]byte{
		filepath.Join(folder, "config.json"):             []byte(`{"architectures":["Qwen2ForCausalLM"]}`),
		filepath.Join(folder, "sub", "tokenizer.json"):   []byte(`{}`),
		filepath.Join(folder, ".cache", "x.lock"):        []byte("lock"),
		filepath.Join(folder, ".model.safetensors.part"): []byte("half"),
		filepath.Join(blobs, "abc"):                      []byte("weights"),
		filepath.Join(dir, "tiny.gguf"):                  []byte("GGUF..."),
		filepath.Join(dir, "secret"):                     []byte("not a model's"),
	}
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(blobs, "abc"), filepath.Join(folder, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Entries: []Entry{{Name: "qwen", Path: folder, Engine: EngineSim}, {Name: "tiny", Path: filepath.Join(dir, "tiny.gguf"), Engine: EngineSim}},
		Engines: BuiltinEngines(), LogDir: t.TempDir(), DigestFile: filepath.Join(dir, "digests.json")})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got, err := m.Files("qwen")
	if err != nil {
		t.Fatal(err)
	}
	want := []ModelFile{
		{Path: "config.json", Size: int64(len(files[filepath.Join(folder, "config.json")])), SHA256: sum(files[filepath.Join(folder, "config.json")])},
		{Path: "model.safetensors", Size: 7, SHA256: sum([]byte("weights"))},
		{Path: "sub/tokenizer.json", Size: 2, SHA256: sum([]byte(`{}`))},
	}
	if !slices.EqualFunc(got, want, func(a, b ModelFile) bool {
		return a.Path == b.Path && a.Size == b.Size && a.SHA256 == b.SHA256 && a.BlockSize == BlockSize && slices.Equal(a.Blocks, []string{b.SHA256})
	}) {
		t.Fatalf("files %+v, want %+v (one block each)", got, want)
	}
	one, err := m.Files("tiny")
	if err != nil || len(one) != 1 || one[0].Path != "tiny.gguf" || one[0].SHA256 != sum([]byte("GGUF...")) {
		t.Fatalf("one-file model: %+v, %v", one, err)
	}
	f, err := m.Open("qwen", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "weights" {
		t.Fatalf("read %q", b)
	}
	for _, bad := range []string{"../secret", "/etc/passwd", ".cache/x.lock", ".model.safetensors.part", "sub", "", "sub/../config.json"} {
		if f, err := m.Open("qwen", bad); err == nil || !errors.Is(err, fs.ErrNotExist) {
			f.Close()
			t.Errorf("Open(qwen, %q): %v, want refused", bad, err)
		}
	}
	if _, err := m.Files("nope"); !errors.Is(err, ErrNoModel) {
		t.Errorf("unknown model: %v", err)
	}
}

// TestFiles_DigestsAreKept: a file is hashed once per version; the digests
// survive a restart (the digest file), and a changed file is hashed again.
// TestHashFile_Blocks: a file is cut into BlockSize blocks, the last one
// short, and an empty file is one empty block.
func TestHashFile_Blocks(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int64{0, 1, BlockSize, BlockSize + 1, 2*BlockSize + 7} {
		p := filepath.Join(dir, "f")
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(i * 7)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := hashFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for off := int64(0); off < size || len(want) == 0; off += BlockSize {
			want = append(want, sum(b[off:min(off+BlockSize, size)]))
		}
		if d.Size != size || d.SHA256 != sum(b) || !slices.Equal(d.Blocks, want) || len(d.Blocks) != blocksOf(size) {
			t.Errorf("size %d: got size %d, %d blocks; want %d blocks", size, d.Size, len(d.Blocks), len(want))
		}
	}
}

func TestFiles_DigestsAreKept(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "m.gguf")
	if err := os.WriteFile(model, []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	digests := filepath.Join(dir, "digests.json")
	open := func() *Manager {
		m, err := New(Config{Entries: []Entry{{Name: "m", Path: model, Engine: EngineSim}}, Engines: BuiltinEngines(), LogDir: t.TempDir(), DigestFile: digests})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		return m
	}
	if got, err := open().Files("m"); err != nil || got[0].SHA256 != sum([]byte("v1")) {
		t.Fatalf("%+v %v", got, err)
	}
	// A cached digest is trusted while size and time match: planted,
	// it is what the next manager answers without reading the file.
	m := open()
	c := m.digests()
	fi, _ := os.Stat(model)
	if e := c.entries[model]; e.SHA256 != sum([]byte("v1")) || e.Size != fi.Size() {
		t.Fatalf("digest file holds %+v", c.entries)
	}
	c.mu.Lock()
	c.entries[model] = digestEntry{Size: fi.Size(), ModTime: fi.ModTime(), SHA256: "planted", Blocks: []string{"planted"}}
	c.mu.Unlock()
	if got, _ := m.Files("m"); got[0].SHA256 != "planted" {
		t.Fatalf("cached digest not used: %+v", got)
	}
	if err := os.WriteFile(model, []byte("v2!"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(model, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	if got, _ := m.Files("m"); got[0].SHA256 != sum([]byte("v2!")) || got[0].Size != 3 {
		t.Fatalf("changed file not hashed again: %+v", got)
	}
}
