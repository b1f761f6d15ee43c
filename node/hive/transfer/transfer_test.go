package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/models"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testBlock = 1 << 20

// peer is a hive serving one model's files as /v1/hive/files does, with
// faults on demand.
type peer struct {
	model string
	block int // the listing's block size
	files map[string][]byte
	order []string
	srv   *httptest.Server

	mu      sync.Mutex
	corrupt map[string]int64 // file -> offset served wrong (every time)
	cutAt   int64            // break the connection after this many body bytes in all (0: never)
	hangAt  int64            // go quiet after this many body bytes in all, as behind a cut link (0: never)
	slow    time.Duration    // a pause before each write: a link slower than loopback
	served  atomic.Int64
	listing func([]models.ModelFile) []models.ModelFile // rewrites the listing (a hostile peer)
}

func newPeer(t testing.TB, model string, files ...struct {
	path string
	data []byte
}) *peer {
	p := &peer{model: model, block: testBlock, files: map[string][]byte{}, corrupt: map[string]int64{}}
	for _, f := range files {
		p.files[f.path] = f.data
		p.order = append(p.order, f.path)
	}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func file(path string, data []byte) struct {
	path string
	data []byte
} {
	return struct {
		path string
		data []byte
	}{path, data}
}

func digests(data []byte, block int) models.ModelFile {
	h := sha256.Sum256(data)
	f := models.ModelFile{Size: int64(len(data)), SHA256: hex.EncodeToString(h[:]), BlockSize: int64(block)}
	for off := 0; off < len(data) || len(f.Blocks) == 0; off += block {
		b := sha256.Sum256(data[off:min(off+block, len(data))])
		f.Blocks = append(f.Blocks, hex.EncodeToString(b[:]))
	}
	return f
}

func (p *peer) serve(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, api.PathHiveFiles+"/"+p.model)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if rest == "" {
		var l listing
		l.Model = p.model
		for _, path := range p.order {
			f := digests(p.files[path], p.block)
			f.Path = path
			l.Files = append(l.Files, f)
		}
		p.mu.Lock()
		if p.listing != nil {
			l.Files = p.listing(l.Files)
		}
		p.mu.Unlock()
		_ = json.NewEncoder(w).Encode(l)
		return
	}
	path := strings.TrimPrefix(rest, "/")
	data, ok := p.files[path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	p.mu.Lock()
	if off, bad := p.corrupt[path]; bad {
		data = bytes.Clone(data)
		data[off] ^= 0xff
	}
	cut, hang, slow := p.cutAt, p.hangAt, p.slow
	p.mu.Unlock()
	http.ServeContent(&countingWriter{ResponseWriter: w, p: p, cut: cut, hang: hang, slow: slow, r: r}, r, "", time.Time{}, bytes.NewReader(data))
}

// countingWriter counts a peer's body bytes and breaks the connection once
// they pass the peer's cut.
type countingWriter struct {
	http.ResponseWriter
	p         *peer
	cut, hang int64
	slow      time.Duration
	r         *http.Request
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.slow > 0 {
		time.Sleep(c.slow) // the link's pace, not a wait for a condition
	}
	if c.hang > 0 && c.p.served.Load() >= c.hang {
		c.ResponseWriter.(http.Flusher).Flush()
		<-c.r.Context().Done() // quiet until the copier gives up
		return 0, c.r.Context().Err()
	}
	if c.cut > 0 {
		left := c.cut - c.p.served.Load()
		if left <= 0 {
			panic(http.ErrAbortHandler)
		}
		if int64(len(b)) > left {
			n, _ := c.ResponseWriter.Write(b[:left])
			c.p.served.Add(int64(n))
			c.ResponseWriter.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	}
	n, err := c.ResponseWriter.Write(b)
	c.p.served.Add(int64(n))
	return n, err
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestCopy_OneFileFromOnePeer(t *testing.T) {
	data := randomBytes(5*testBlock+123, 1)
	p := newPeer(t, "tiny", file("Tiny-Q4_K_M.gguf", data))
	dir := t.TempDir()
	var last Progress
	res, err := Copy(context.Background(), "tiny", dir, Options{Peers: []string{p.srv.URL}, Progress: func(pr Progress) { last = pr }})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "tiny.gguf"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("copied %d bytes (%v), want the file", len(got), err)
	}
	if res.Path != filepath.Join(dir, "tiny.gguf") || res.Bytes != int64(len(data)) || res.Fetched != int64(len(data)) || res.Refetched != 0 {
		t.Fatalf("result %+v", res)
	}
	if last.Done != last.Total || last.Total != int64(len(data)) {
		t.Fatalf("last progress %+v", last)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("models folder holds %v, want the model alone", ents)
	}
	found, _ := models.ScanModelsDir(dir)
	if len(found) != 1 || found[0].Name != "tiny" {
		t.Fatalf("catalog scan finds %+v", found)
	}
}

// TestCopy_FolderFromTwoPeers: a safetensors folder comes from both peers
// at once, each serving part of it, and is invisible to the catalog scan
// until whole.
func TestCopy_FolderFromTwoPeers(t *testing.T) {
	files := []struct {
		path string
		data []byte
	}{file("config.json", []byte(`{"architectures":["X"]}`)), file("model-00001-of-00002.safetensors", randomBytes(6*testBlock, 2)),
		file("model-00002-of-00002.safetensors", randomBytes(3*testBlock+5, 3)), file("tok/tokenizer.json", []byte(`{}`))}
	a, b := newPeer(t, "qwen", files...), newPeer(t, "qwen", files...)
	// Runs of 2 blocks from peers slower than loopback: each worker is
	// still fetching when the other takes the next run, so both serve.
	a.slow, b.slow = time.Millisecond, time.Millisecond
	old := runBlocks
	runBlocks = 2
	defer func() { runBlocks = old }()
	dir := t.TempDir()
	seenEarly := false
	_, err := Copy(context.Background(), "qwen", dir, Options{Peers: []string{a.srv.URL, b.srv.URL}, ProgressEvery: time.Nanosecond,
		Progress: func(Progress) {
			if found, _ := models.ScanModelsDir(dir); len(found) > 0 {
				seenEarly = true
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if seenEarly {
		t.Error("the catalog scan saw the model before the copy ended")
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(dir, "qwen", filepath.FromSlash(f.path)))
		if err != nil || !bytes.Equal(got, f.data) {
			t.Fatalf("%s: %d bytes, %v", f.path, len(got), err)
		}
	}
	if a.served.Load() == 0 || b.served.Load() == 0 {
		t.Errorf("served %d and %d bytes: want both peers to serve", a.served.Load(), b.served.Load())
	}
	found, _ := models.ScanModelsDir(dir)
	if len(found) != 1 || found[0].Name != "qwen" || found[0].Engine != models.EngineVLLM {
		t.Fatalf("catalog scan finds %+v", found)
	}
}

// TestCopy_CorruptBlockFetchedAgain: a peer that serves one wrong byte has
// that block fetched again from the other; only that block is fetched
// twice.
func TestCopy_CorruptBlockFetchedAgain(t *testing.T) {
	data := randomBytes(8*testBlock, 4)
	bad, good := newPeer(t, "m", file("m.gguf", data)), newPeer(t, "m", file("m.gguf", data))
	bad.corrupt["m.gguf"] = 3*testBlock + 17
	dir := t.TempDir()
	res, err := Copy(context.Background(), "m", dir, Options{Peers: []string{bad.srv.URL, good.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "m.gguf"))
	if !bytes.Equal(got, data) {
		t.Fatal("the copy is not the file")
	}
	if res.Refetched > testBlock {
		t.Errorf("fetched %d bytes again, want at most the one bad block (%d)", res.Refetched, testBlock)
	}

	// A byte wrong on every peer fails the copy, naming the file.
	only := newPeer(t, "m", file("m.gguf", data))
	only.corrupt["m.gguf"] = 5
	if _, err := Copy(context.Background(), "m", t.TempDir(), Options{Peers: []string{only.srv.URL}}); err == nil || !strings.Contains(err.Error(), "m.gguf") {
		t.Fatalf("err %v, want the block named wrong", err)
	}
}

// TestCopy_PeerDiesMidCopy: a peer that breaks off is dropped; the other
// finishes the copy.
func TestCopy_PeerDiesMidCopy(t *testing.T) {
	data := randomBytes(10*testBlock, 5)
	dying, steady := newPeer(t, "m", file("m.gguf", data)), newPeer(t, "m", file("m.gguf", data))
	dying.cutAt = 2*testBlock + 1000
	dir := t.TempDir()
	res, err := Copy(context.Background(), "m", dir, Options{Peers: []string{dying.srv.URL, steady.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "m.gguf"))
	if !bytes.Equal(got, data) {
		t.Fatal("the copy is not the file")
	}
	t.Logf("dying peer served %d bytes, steady %d; fetched %d, again %d", dying.served.Load(), steady.served.Load(), res.Fetched, res.Refetched)
}

// TestCopy_PeerGoesQuiet: a peer that stops sending without closing (a
// cut link) is given up after StallTimeout; the other finishes the copy.
func TestCopy_PeerGoesQuiet(t *testing.T) {
	data := randomBytes(12*testBlock, 10)
	quiet, steady := newPeer(t, "m", file("m.gguf", data)), newPeer(t, "m", file("m.gguf", data))
	quiet.hangAt = testBlock + 5000
	dir := t.TempDir()
	if _, err := Copy(context.Background(), "m", dir, Options{Peers: []string{quiet.srv.URL, steady.srv.URL}, StallTimeout: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "m.gguf")); !bytes.Equal(got, data) {
		t.Fatal("the copy is not the file")
	}
}

// TestCopy_Resumes: a copy that broke off (its only peer died) resumes at
// the blocks it lacks: the second copy fetches the rest, not the whole.
func TestCopy_Resumes(t *testing.T) {
	data := randomBytes(20*testBlock, 6)
	p := newPeer(t, "m", file("m.gguf", data))
	p.cutAt = 10*testBlock + 4321
	dir := t.TempDir()
	if _, err := Copy(context.Background(), "m", dir, Options{Peers: []string{p.srv.URL}}); err == nil {
		t.Fatal("the copy survived its only peer's death")
	}
	if _, err := os.Stat(filepath.Join(dir, "m.gguf")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a half copy is in place: %v", err)
	}
	p.mu.Lock()
	p.cutAt = 0
	p.mu.Unlock()
	before := p.served.Load()
	res, err := Copy(context.Background(), "m", dir, Options{Peers: []string{p.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "m.gguf"))
	if !bytes.Equal(got, data) {
		t.Fatal("the resumed copy is not the file")
	}
	again := before + (p.served.Load() - before) - int64(len(data))
	t.Logf("first copy served %d bytes, the resume %d; %d fetched twice (%.1f%% of the file)", before, p.served.Load()-before, again, 100*float64(again)/float64(len(data)))
	if res.Fetched >= int64(len(data)) || again > 2*testBlock {
		t.Fatalf("resume fetched %d of %d bytes; %d twice", res.Fetched, len(data), again)
	}
}

// TestCopy_RefusesWhatCannotBe: a hostile listing, no space, a name that
// is a path.
func TestCopy_RefusesWhatCannotBe(t *testing.T) {
	data := randomBytes(1000, 7)
	for _, tc := range []struct {
		name    string
		listing func([]models.ModelFile) []models.ModelFile
		want    string
	}{
		{"a path out of the folder", func(f []models.ModelFile) []models.ModelFile { f[0].Path = "../escape"; return f }, "leaves"},
		{"an absolute path", func(f []models.ModelFile) []models.ModelFile { f[0].Path = "/etc/passwd"; return f }, "not a plain"},
		{"a hidden file", func(f []models.ModelFile) []models.ModelFile { f[0].Path = ".bashrc"; return f }, "hidden"},
		{"blocks that do not add up", func(f []models.ModelFile) []models.ModelFile { f[0].Blocks = nil; return f }, "block digests"},
		{"no files", func([]models.ModelFile) []models.ModelFile { return nil }, "no files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPeer(t, "m", file("m.gguf", data))
			p.listing = tc.listing
			dir := t.TempDir()
			if _, err := Copy(context.Background(), "m", dir, Options{Peers: []string{p.srv.URL}}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if ents, _ := os.ReadDir(filepath.Dir(dir)); len(ents) != 1 {
				t.Fatalf("something was written beside the models folder: %v", ents)
			}
		})
	}
	p := newPeer(t, "m", file("m.gguf", data))
	old := statfs
	statfs = func(string) (int64, error) { return 500, nil }
	defer func() { statfs = old }()
	if _, err := Copy(context.Background(), "m", t.TempDir(), Options{Peers: []string{p.srv.URL}}); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "needs 1000 B, 500 B free") {
		t.Fatalf("err %v, want no space with the figures", err)
	}
	statfs = old
	for _, name := range []string{"../m", "a/b", ".m", ""} {
		if _, err := Copy(context.Background(), name, t.TempDir(), Options{Peers: []string{p.srv.URL}}); err == nil {
			t.Errorf("copy of %q went ahead", name)
		}
	}
}

// TestCopy_RateLimit: with --transfer-rate at 64 KiB/s a 3 MiB copy (some
// 5 ms on loopback without it) is still under way when its context ends a
// second later, having fetched about what the rate allows.
func TestCopy_RateLimit(t *testing.T) {
	data := randomBytes(3*testBlock, 8)
	p := newPeer(t, "m", file("m.gguf", data))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := Copy(ctx, "m", t.TempDir(), Options{Peers: []string{p.srv.URL}, Rate: 64 << 10})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the copy still under way at the deadline", err)
	}
}

// benchPeer serves data as model m in production-sized blocks.
func benchPeer(b *testing.B, data []byte) *peer {
	p := newPeer(b, "m", file("m.gguf", data))
	p.block = models.BlockSize
	return p
}

// BenchmarkCopy is a 256 MiB model copied over loopback from one peer and
// from two, beside curl fetching the same file from the same server in the
// same run (plain HTTP here; between hives it is the cluster's TLS). It
// reports MB/s of each and the copy's share of curl's rate.
func BenchmarkCopy(b *testing.B) {
	const size = 256 << 20
	data := randomBytes(size, 9)
	a, c := benchPeer(b, data), benchPeer(b, data)
	curl, err := exec.LookPath("curl")
	var curlMBs float64
	if err == nil {
		dir := b.TempDir()
		start := time.Now()
		for range 3 {
			out := filepath.Join(dir, "curl.out")
			if err := exec.Command(curl, "-s", "-o", out, a.srv.URL+api.PathHiveFiles+"/m/m.gguf").Run(); err != nil {
				b.Fatal(err)
			}
			os.Remove(out)
		}
		curlMBs = 3 * size / 1e6 / time.Since(start).Seconds()
		b.ReportMetric(curlMBs, "curl-MB/s")
	}
	for _, peers := range [][]string{{a.srv.URL}, {a.srv.URL, c.srv.URL}} {
		dir := b.TempDir()
		start := time.Now()
		for i := range 3 {
			if _, err := Copy(context.Background(), "m", filepath.Join(dir, strconv.Itoa(i)), Options{Peers: peers}); err != nil {
				b.Fatal(err)
			}
			os.RemoveAll(filepath.Join(dir, strconv.Itoa(i)))
		}
		mbs := 3 * size / 1e6 / time.Since(start).Seconds()
		b.ReportMetric(mbs, fmt.Sprintf("copy-%dpeer-MB/s", len(peers)))
		if curlMBs > 0 {
			b.ReportMetric(100*mbs/curlMBs, fmt.Sprintf("copy-%dpeer-%%-of-curl", len(peers)))
		}
	}
}
