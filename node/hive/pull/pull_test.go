package pull

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/hubtest"
	"github.com/rbee/rbee/node/hive/models"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Ref
		err  bool
	}{
		{in: "hf:Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", want: Ref{Kind: "hf", Repo: "Qwen/Qwen2.5-7B-Instruct-GGUF", Revision: "main", Selector: "Q4_K_M"}},
		{in: "hf:Qwen/Qwen2.5-0.5B-Instruct", want: Ref{Kind: "hf", Repo: "Qwen/Qwen2.5-0.5B-Instruct", Revision: "main"}},
		{in: "hf:org/repo/sub/model-q8_0.gguf@v1.2", want: Ref{Kind: "hf", Repo: "org/repo", Revision: "v1.2", Selector: "sub/model-q8_0.gguf"}},
		{in: "hf:org/repo:Q8_0@0123abc", want: Ref{Kind: "hf", Repo: "org/repo", Revision: "0123abc", Selector: "Q8_0"}},
		{in: "https://example.com/models/tiny.gguf", want: Ref{Kind: "url", URL: "https://example.com/models/tiny.gguf"}},
		{in: "http://127.0.0.1:8080/tiny.gguf", want: Ref{Kind: "url", URL: "http://127.0.0.1:8080/tiny.gguf"}},
		{in: "http://example.com/tiny.gguf", err: true},
		{in: "https://example.com/weights.bin", err: true},
		{in: "hf:onlyone", err: true},
		{in: "hf:org/repo/../x.gguf", err: true},
		{in: "hf:org/repo/notes.txt", err: true},
		{in: "hf:org/repo:Q4/x.gguf", err: true},
		{in: "hf:../repo", err: true},
		{in: "hf:org/repo@", err: true},
		{in: "Qwen/Qwen2.5", err: true},
	} {
		got, err := ParseRef(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func pull(t *testing.T, hub *hubtest.Hub, ref, dir string, opts Options) (Result, error) {
	t.Helper()
	r, err := ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	opts.Endpoint = hub.URL()
	return Pull(context.Background(), r, dir, opts)
}

// TestPull_GGUFByTag: a quantization tag picks one GGUF of the repository,
// which lands as NAME.gguf, verified, where the catalog scan finds it.
func TestPull_GGUFByTag(t *testing.T) {
	hub := hubtest.New(t)
	q4, q8 := randomBytes(3<<20, 1), randomBytes(5<<20, 2)
	hub.Add("Qwen/Tiny-GGUF", "README.md", []byte("# tiny"), false)
	hub.Add("Qwen/Tiny-GGUF", "tiny-q4_k_m.gguf", q4, true)
	hub.Add("Qwen/Tiny-GGUF", "tiny-q8_0.gguf", q8, true)
	dir := t.TempDir()
	var last Progress
	res, err := pull(t, hub, "hf:Qwen/Tiny-GGUF:Q4_K_M", dir, Options{Progress: func(p Progress) { last = p }})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "tiny-q4_k_m.gguf"))
	if !bytes.Equal(got, q4) || res.Name != "tiny-q4_k_m" || res.Bytes != int64(len(q4)) || res.Fetched != int64(len(q4)) {
		t.Fatalf("result %+v, file %d bytes", res, len(got))
	}
	if last.Done != last.Total || last.Total != int64(len(q4)) {
		t.Errorf("last progress %+v", last)
	}
	found, _ := models.ScanModelsDir(dir)
	if len(found) != 1 || found[0].Name != "tiny-q4_k_m" {
		t.Fatalf("scan finds %+v", found)
	}
	// By file name, and a tag that is not there.
	if _, err := pull(t, hub, "hf:Qwen/Tiny-GGUF/tiny-q8_0.gguf", dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pull(t, hub, "hf:Qwen/Tiny-GGUF:Q2_K", dir, Options{}); err == nil || !strings.Contains(err.Error(), "tiny-q4_k_m.gguf, tiny-q8_0.gguf") {
		t.Fatalf("unknown tag: %v", err)
	}
	if _, err := pull(t, hub, "hf:Qwen/Tiny-GGUF", t.TempDir(), Options{}); err == nil || !strings.Contains(err.Error(), "name a quantization tag") {
		t.Fatalf("two GGUFs, no tag: %v", err)
	}
}

// TestPull_SafetensorsFolder: a repository with safetensors comes as a
// folder (config, tokenizer, weights; not the README), invisible to the
// catalog scan until whole; small files are checked by git's SHA-1.
func TestPull_SafetensorsFolder(t *testing.T) {
	hub := hubtest.New(t)
	repo := "org/Small-Model"
	files := map[string][]byte{"config.json": []byte(`{"architectures":["LlamaForCausalLM"]}`), "tokenizer.json": []byte(`{}`),
		"model-00001-of-00002.safetensors": randomBytes(2<<20, 3), "model-00002-of-00002.safetensors": randomBytes(1<<20, 4)}
	hub.Add(repo, "README.md", []byte("readme"), false)
	hub.Add(repo, ".gitattributes", []byte("*.safetensors filter=lfs"), false)
	for _, p := range []string{"config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
		hub.Add(repo, p, files[p], strings.HasSuffix(p, ".safetensors"))
	}
	hub.Add(repo, "onnx/model.onnx", []byte("other format"), true)
	dir := t.TempDir()
	early := false
	res, err := pull(t, hub, "hf:"+repo, dir, Options{ProgressEvery: time.Nanosecond, Progress: func(p Progress) {
		if found, _ := models.ScanModelsDir(dir); len(found) > 0 && p.Done < p.Total {
			early = true
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if early {
		t.Error("the scan saw the model before the pull ended")
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "Small-Model"))
	if len(ents) != len(files) || res.Name != "Small-Model" {
		t.Fatalf("folder holds %v; result %+v", ents, res)
	}
	for p, want := range files {
		if got, _ := os.ReadFile(filepath.Join(dir, "Small-Model", p)); !bytes.Equal(got, want) {
			t.Errorf("%s differs", p)
		}
	}
	found, _ := models.ScanModelsDir(dir)
	if len(found) != 1 || found[0].Engine != models.EngineVLLM {
		t.Fatalf("scan finds %+v", found)
	}
}

// TestPull_ResumesAfterACut: a download cut half way leaves a .part; the
// next pull fetches only the rest.
func TestPull_ResumesAfterACut(t *testing.T) {
	hub := hubtest.New(t)
	data := randomBytes(8<<20, 5)
	hub.Add("o/r", "m.gguf", data, true)
	hub.CutOnce("m.gguf", 4<<20+12345)
	dir := t.TempDir()
	if _, err := pull(t, hub, "hf:o/r", dir, Options{}); err == nil || !strings.Contains(err.Error(), "resume") {
		t.Fatalf("cut pull: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "m.gguf")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a half file is in place")
	}
	res, err := pull(t, hub, "hf:o/r", dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "m.gguf"))
	again := hub.Served("m.gguf") - int64(len(data))
	t.Logf("served %d bytes for an %d-byte file: %d twice; the resume fetched %d", hub.Served("m.gguf"), len(data), again, res.Fetched)
	if !bytes.Equal(got, data) || again > int64(len(data))/100 || res.Fetched >= int64(len(data)) {
		t.Fatalf("resume: file ok %v, %d bytes fetched twice", bytes.Equal(got, data), again)
	}
}

// TestPull_CorruptDownloadFetchedAgain: a byte served wrong fails the
// SHA-256; the pull fetches the file once more and gets it right.
func TestPull_CorruptDownloadFetchedAgain(t *testing.T) {
	hub := hubtest.New(t)
	data := randomBytes(1<<20, 6)
	hub.Add("o/r", "m.gguf", data, true)
	hub.CorruptOnce("m.gguf", 777)
	dir := t.TempDir()
	if _, err := pull(t, hub, "hf:o/r", dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "m.gguf")); !bytes.Equal(got, data) {
		t.Fatal("the file is not the hub's")
	}
	if hub.Served("m.gguf") != 2*int64(len(data)) {
		t.Errorf("served %d bytes, want the file twice", hub.Served("m.gguf"))
	}
}

// TestPull_Refusals: a token when the hub wants one, a missing repository
// or file, a rate limit, no disk space: each a clear error naming what.
func TestPull_Refusals(t *testing.T) {
	hub := hubtest.New(t)
	hub.Add("o/r", "m.gguf", randomBytes(1000, 7), true)
	hub.RequireToken("hf_secret")
	if _, err := pull(t, hub, "hf:o/r", t.TempDir(), Options{}); err == nil || !strings.Contains(err.Error(), "HF_TOKEN") {
		t.Errorf("no token: %v", err)
	}
	if _, err := pull(t, hub, "hf:o/r", t.TempDir(), Options{Token: "hf_secret"}); err != nil {
		t.Errorf("with the token: %v", err)
	}
	if _, err := pull(t, hub, "hf:o/nope", t.TempDir(), Options{Token: "hf_secret"}); err == nil || !strings.Contains(err.Error(), "no such repository") {
		t.Errorf("missing repo: %v", err)
	}
	hub.FailOnce("tree", http.StatusTooManyRequests)
	if _, err := pull(t, hub, "hf:o/r", t.TempDir(), Options{Token: "hf_secret"}); err == nil || !strings.Contains(err.Error(), "retry after 7") {
		t.Errorf("rate limited: %v", err)
	}
	old := statfs
	statfs = func(string) (int64, error) { return 10, nil }
	defer func() { statfs = old }()
	if _, err := pull(t, hub, "hf:o/r", t.TempDir(), Options{Token: "hf_secret"}); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "needs 1000 B, 10 B free") {
		t.Errorf("no space: %v", err)
	}
}

// TestPull_HostileTree: a listing whose paths would leave the models
// folder is refused before anything is written.
func TestPull_HostileTree(t *testing.T) {
	for _, p := range []string{"../evil.gguf", "/etc/x.gguf", "a/../../b.gguf", ".hidden.gguf"} {
		_, _, err := choose(Ref{Kind: "hf", Repo: "o/r"}, []treeEntry{{Type: "file", Path: p, Size: 1}})
		if err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}

// TestPull_URL: a plain URL, with its SHA-256 given, resumes too.
func TestPull_URL(t *testing.T) {
	hub := hubtest.New(t)
	data := randomBytes(2<<20, 8)
	hub.Add("o/r", "m.gguf", data, true)
	dir := t.TempDir()
	u := hub.URL() + "/cdn/o/r/m.gguf"
	hub.CutOnce("m.gguf", 1<<20)
	if _, err := Pull(context.Background(), Ref{Kind: "url", URL: u}, dir, Options{}); err == nil {
		t.Fatal("cut download succeeded")
	}
	good := "0000000000000000000000000000000000000000000000000000000000000000"
	if _, err := Pull(context.Background(), Ref{Kind: "url", URL: u}, dir, Options{SHA256: good}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("wrong checksum: %v", err)
	}
	if _, err := Pull(context.Background(), Ref{Kind: "url", URL: u}, dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "m.gguf")); !bytes.Equal(got, data) {
		t.Fatal("the file is not the server's")
	}
}

// BenchmarkPull is a 256 MiB GGUF pulled from the test hub beside curl
// fetching the same file from the same hub in the same run (loopback,
// plain HTTP): MB/s of each and the pull's share of curl's.
func BenchmarkPull(b *testing.B) {
	const size = 256 << 20
	hub := hubtest.New(b)
	hub.Add("o/r", "m.gguf", randomBytes(size, 9), true)
	var curlMBs float64
	if curl, err := exec.LookPath("curl"); err == nil {
		out := filepath.Join(b.TempDir(), "c")
		start := time.Now()
		for range 3 {
			if err := exec.Command(curl, "-sL", "-o", out, hub.URL()+"/o/r/resolve/main/m.gguf").Run(); err != nil {
				b.Fatal(err)
			}
			os.Remove(out)
		}
		curlMBs = 3 * size / 1e6 / time.Since(start).Seconds()
		b.ReportMetric(curlMBs, "curl-MB/s")
	}
	start := time.Now()
	for range 3 {
		dir := b.TempDir()
		if _, err := Pull(context.Background(), Ref{Kind: "hf", Repo: "o/r", Revision: "main"}, dir, Options{Endpoint: hub.URL()}); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(dir)
	}
	mbs := 3 * size / 1e6 / time.Since(start).Seconds()
	b.ReportMetric(mbs, "pull-MB/s")
	if curlMBs > 0 {
		b.ReportMetric(100*mbs/curlMBs, "pull-%-of-curl")
	}
}
