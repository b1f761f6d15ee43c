// Package pull fetches a model into a hive's models folder from a Hugging
// Face hub (or a mirror: HF_ENDPOINT) or a plain https URL: each file into
// a .part beside its target, resumed with an HTTP range after any
// interruption, checked against the hub's SHA-256 (git's SHA-1 for the small
// files the hub does not keep in LFS), made durable, then renamed. A folder
// model is assembled in a hidden folder and renamed whole, so the catalog
// scan (models.ScanModelsDir) never sees half a model.
package pull

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/rbee/node/hive/modeldir"
)

// Ref names what to pull.
type Ref struct {
	// Kind is "hf" or "url".
	Kind string
	// Repo is ORG/NAME on the hub; Revision a branch, tag or commit
	// ("main" by default); Selector picks the files: a GGUF file's path,
	// a quantization tag matched against GGUF names (Q4_K_M), or "" for
	// the repository's model (its safetensors folder, or its one GGUF).
	Repo, Revision, Selector string
	// URL is the file's address (Kind "url").
	URL string
}

func (r Ref) String() string {
	if r.Kind == "url" {
		return r.URL
	}
	s := "hf:" + r.Repo
	if r.Selector != "" {
		if strings.HasSuffix(strings.ToLower(r.Selector), ".gguf") {
			s += "/" + r.Selector
		} else {
			s += ":" + r.Selector
		}
	}
	if r.Revision != "main" {
		s += "@" + r.Revision
	}
	return s
}

var repoPart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$`)

// ParseRef reads hf:ORG/REPO[:TAG|/FILE.gguf][@REVISION], or an https://
// URL (http:// only to this machine, for tests and local mirrors).
func ParseRef(s string) (Ref, error) {
	if u, err := url.Parse(s); err == nil && (u.Scheme == "https" || u.Scheme == "http") {
		if u.Scheme == "http" && u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost" && u.Hostname() != "::1" {
			return Ref{}, fmt.Errorf("pull %s: plain http only from this machine; use https", s)
		}
		base := path.Base(u.Path)
		if !strings.HasSuffix(strings.ToLower(base), ".gguf") || safeName(base) != nil {
			return Ref{}, fmt.Errorf("pull %s: a URL must name a .gguf file", s)
		}
		return Ref{Kind: "url", URL: s}, nil
	}
	rest, ok := strings.CutPrefix(s, "hf:")
	if !ok {
		return Ref{}, fmt.Errorf("pull %q: want hf:ORG/REPO[:TAG|/FILE.gguf][@REVISION] or an https:// URL", s)
	}
	r := Ref{Kind: "hf", Revision: "main"}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		r.Revision, rest = rest[i+1:], rest[:i]
		if r.Revision == "" || strings.ContainsAny(r.Revision, " /\\\x00") {
			return Ref{}, fmt.Errorf("pull %q: bad revision", s)
		}
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) < 2 {
		return Ref{}, fmt.Errorf("pull %q: want hf:ORG/REPO", s)
	}
	name, tag, hasTag := strings.Cut(parts[1], ":")
	r.Repo = parts[0] + "/" + name
	switch {
	case len(parts) == 3 && hasTag:
		return Ref{}, fmt.Errorf("pull %q: a tag or a file, not both", s)
	case len(parts) == 3:
		r.Selector = parts[2]
		if !strings.HasSuffix(strings.ToLower(r.Selector), ".gguf") || modeldir.SafePath(r.Selector) != nil {
			return Ref{}, fmt.Errorf("pull %q: a file must be a .gguf path in the repository", s)
		}
	case hasTag:
		if tag == "" || strings.ContainsAny(tag, " /\\\x00") {
			return Ref{}, fmt.Errorf("pull %q: bad tag", s)
		}
		r.Selector = tag
	}
	if !repoPart.MatchString(parts[0]) || !repoPart.MatchString(name) {
		return Ref{}, fmt.Errorf("pull %q: %q is not a repository name", s, r.Repo)
	}
	return r, nil
}

// Options are a pull's settings.
type Options struct {
	// Endpoint is the hub's base URL (HF_ENDPOINT; default
	// https://huggingface.co); Token its bearer token (HF_TOKEN).
	Endpoint, Token string
	// SHA256 is the expected digest of a URL pull's file (hex), if known.
	SHA256 string
	// Client makes the requests (default: one with no overall timeout).
	Client *http.Client
	// Progress is called at most every ProgressEvery (default 500 ms)
	// and once at the end.
	Progress      func(Progress)
	ProgressEvery time.Duration
}

// Progress is where a pull stands.
type Progress struct {
	File    string  `json:"file"`
	Done    int64   `json:"done"`
	Total   int64   `json:"total"`
	Resumed int64   `json:"resumed"`
	Rate    float64 `json:"rate"`
}

// Result is a finished pull.
type Result struct {
	// Name is the model's catalog name, as models.ScanModelsDir names it;
	// Path the file or folder in the models folder.
	Name, Path string
	// Bytes is the model's size; Fetched what this pull downloaded.
	Bytes, Fetched int64
	Files          []File
}

// File is one file of a pull.
type File struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	// SHA256 is the LFS digest the hub gave (hex); SHA1 the git blob
	// digest of a small file kept out of LFS. Empty when unknown.
	SHA256 string `json:"sha256,omitempty"`
	SHA1   string `json:"sha1,omitempty"`
}

// ErrNoSpace is wrapped by a pull refused for want of disk space.
var ErrNoSpace = errors.New("not enough free disk space")

// statfs is swapped by tests.
var statfs = modeldir.Free

// Pull fetches ref into the models folder dir.
func Pull(ctx context.Context, ref Ref, dir string, opts Options) (Result, error) {
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.Endpoint == "" {
		opts.Endpoint = "https://huggingface.co"
	}
	opts.Endpoint = strings.TrimRight(opts.Endpoint, "/")
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 500 * time.Millisecond
	}
	p := &puller{opts: opts, ref: ref}
	var files []File
	var urls []string
	var name string
	folder := false
	switch ref.Kind {
	case "url":
		base := path.Base(mustURL(ref.URL).Path)
		name = strings.TrimSuffix(base, path.Ext(base))
		files, urls = []File{{Path: base, Size: -1, SHA256: strings.ToLower(opts.SHA256)}}, []string{ref.URL}
	case "hf":
		tree, err := p.tree(ctx)
		if err != nil {
			return Result{}, err
		}
		if files, folder, err = choose(ref, tree); err != nil {
			return Result{}, err
		}
		for _, f := range files {
			urls = append(urls, opts.Endpoint+"/"+ref.Repo+"/resolve/"+url.PathEscape(ref.Revision)+"/"+modeldir.EscapePath(f.Path))
		}
		if folder {
			name = path.Base(ref.Repo)
		} else {
			base := path.Base(files[0].Path)
			name = strings.TrimSuffix(base, path.Ext(base))
		}
	default:
		return Result{}, fmt.Errorf("pull: unknown ref kind %q", ref.Kind)
	}
	if err := safeName(name); err != nil {
		return Result{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	final := filepath.Join(dir, name)
	work := dir
	if folder {
		work = filepath.Join(dir, "."+name+".partial")
	} else {
		final += ".gguf"
	}
	if _, err := os.Stat(final); err == nil {
		return Result{}, fmt.Errorf("pull %s: %s exists already", ref, final)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return Result{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	// What is there already, and what is left to fetch.
	targets := make([]string, len(files))
	var have, total int64
	for i, f := range files {
		targets[i] = filepath.Join(work, filepath.FromSlash(f.Path))
		if !folder {
			targets[i] = final
		}
		if fi, err := os.Stat(targets[i]); err == nil && f.Size >= 0 && fi.Size() == f.Size {
			have += f.Size
		} else if fi, err := os.Stat(targets[i] + ".part"); err == nil && (f.Size < 0 || fi.Size() <= f.Size) {
			have += fi.Size()
		}
		total += max(f.Size, 0)
	}
	if free, err := statfs(dir); err == nil && total > 0 {
		if need := total - have; need+need/100 > free {
			return Result{}, fmt.Errorf("pull %s: %w: needs %s, %s free in %s", ref, ErrNoSpace, modeldir.Size(need), modeldir.Size(free), dir)
		}
	}
	p.total, p.resumed, p.done, p.started = total, have, have, time.Now()
	for i, f := range files {
		if fi, err := os.Stat(targets[i]); err == nil && f.Size >= 0 && fi.Size() == f.Size {
			continue // a folder's file finished before the pull broke off
		}
		if err := os.MkdirAll(filepath.Dir(targets[i]), 0o755); err != nil {
			return Result{}, fmt.Errorf("pull %s: %w", ref, err)
		}
		size, err := p.file(ctx, urls[i], f, targets[i])
		if err != nil {
			return Result{}, err
		}
		files[i].Size = size
	}
	if folder {
		if err := os.Rename(work, final); err != nil {
			return Result{}, fmt.Errorf("pull %s: %w", ref, err)
		}
	}
	p.report(files[len(files)-1].Path, true)
	res := Result{Name: name, Path: final, Fetched: p.fetched, Files: files}
	for _, f := range files {
		res.Bytes += f.Size
	}
	return res, nil
}

func mustURL(s string) *url.URL {
	u, _ := url.Parse(s)
	return u
}

// treeEntry is one entry of the hub's tree listing.
type treeEntry struct {
	Type string `json:"type"`
	Path string `json:"path"`
	Size int64  `json:"size"`
	OID  string `json:"oid"`
	LFS  *struct {
		OID  string `json:"oid"`
		Size int64  `json:"size"`
	} `json:"lfs"`
}

type puller struct {
	opts Options
	ref  Ref

	total, resumed, done, fetched int64
	started, last, rateAt         time.Time
	rateFrom                      int64
	rate                          float64
}

// tree lists the repository's files at the revision.
func (p *puller) tree(ctx context.Context) ([]treeEntry, error) {
	u := p.opts.Endpoint + "/api/models/" + p.ref.Repo + "/tree/" + url.PathEscape(p.ref.Revision) + "?recursive=true"
	resp, err := p.get(ctx, u, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := statusErr(resp, p.ref.String(), ""); err != nil {
		return nil, err
	}
	var tree []treeEntry
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&tree); err != nil {
		return nil, fmt.Errorf("pull %s: the hub's file list: %w", p.ref, err)
	}
	return tree, nil
}

// choose picks the files ref asks for from the repository's tree, and says
// whether they make a folder model.
func choose(ref Ref, tree []treeEntry) ([]File, bool, error) {
	var ggufs, weights, all []File
	for _, e := range tree {
		if e.Type != "file" || hidden(e.Path) {
			continue // .gitattributes and the like
		}
		if err := modeldir.SafePath(e.Path); err != nil {
			return nil, false, fmt.Errorf("pull %s: the hub lists %w", ref, err)
		}
		f := File{Path: e.Path, Size: e.Size}
		if e.LFS != nil {
			f.SHA256, f.Size = strings.ToLower(e.LFS.OID), e.LFS.Size
		} else {
			f.SHA1 = strings.ToLower(e.OID)
		}
		lower := strings.ToLower(e.Path)
		switch {
		case strings.HasSuffix(lower, ".gguf"):
			ggufs = append(ggufs, f)
		case strings.HasSuffix(lower, ".safetensors"):
			weights = append(weights, f)
			all = append(all, f)
		case keepInFolder(lower):
			all = append(all, f)
		}
	}
	names := func(fs []File) string {
		var n []string
		for _, f := range fs {
			n = append(n, f.Path)
		}
		return strings.Join(n, ", ")
	}
	switch sel := ref.Selector; {
	case strings.HasSuffix(strings.ToLower(sel), ".gguf"):
		for _, f := range ggufs {
			if f.Path == sel {
				return []File{f}, false, nil
			}
		}
		return nil, false, fmt.Errorf("pull %s: no file %s in the repository (its GGUF files: %s)", ref, sel, names(ggufs))
	case sel != "":
		tag := regexp.MustCompile(`(?i)(^|[-_./])` + regexp.QuoteMeta(sel) + `([-_.]|$)`)
		var match []File
		for _, f := range ggufs {
			if tag.MatchString(path.Base(f.Path)) {
				match = append(match, f)
			}
		}
		switch len(match) {
		case 0:
			return nil, false, fmt.Errorf("pull %s: no GGUF file is tagged %s (its GGUF files: %s)", ref, sel, names(ggufs))
		case 1:
			return match, false, nil
		}
		return nil, false, fmt.Errorf("pull %s: %d GGUF files are tagged %s (a split model is not pulled yet; name one file): %s", ref, len(match), sel, names(match))
	case len(weights) > 0:
		if !slices.ContainsFunc(all, func(f File) bool { return f.Path == "config.json" }) {
			return nil, false, fmt.Errorf("pull %s: safetensors without a config.json: not a model vLLM reads", ref)
		}
		return all, true, nil
	case len(ggufs) == 1:
		return ggufs, false, nil
	case len(ggufs) > 1:
		return nil, false, fmt.Errorf("pull %s: name a quantization tag or a file: %s", ref, names(ggufs))
	}
	return nil, false, fmt.Errorf("pull %s: the repository holds no GGUF or safetensors model", ref)
}

// keepInFolder says whether a folder model needs a file: its config, its
// tokenizer and the like, not the README, pictures or the same weights in
// other formats.
func keepInFolder(p string) bool {
	base := path.Base(p)
	switch {
	case strings.HasPrefix(base, "readme"), strings.HasPrefix(base, "."), strings.Contains(p, "/"):
		return false
	}
	for _, ext := range []string{".json", ".model", ".txt", ".jinja", ".tiktoken"} {
		if strings.HasSuffix(base, ext) {
			return true
		}
	}
	return false
}

// file fetches one file into target, resuming its .part; it returns the
// file's size.
func (p *puller) file(ctx context.Context, u string, f File, target string) (int64, error) {
	for attempt := 0; ; attempt++ {
		size, err := p.fetch(ctx, u, f, target)
		var bad *mismatch
		if errors.As(err, &bad) && attempt == 0 {
			// A bad .part (or a bad transfer): once more from 0.
			_ = os.Remove(target + ".part")
			continue
		}
		return size, err
	}
}

// mismatch is a file whose digest is not the hub's.
type mismatch struct{ file, got, want string }

func (m *mismatch) Error() string {
	return fmt.Sprintf("%s: checksum %s, the hub says %s", m.file, m.got, m.want)
}

func (p *puller) fetch(ctx context.Context, u string, f File, target string) (int64, error) {
	part := target + ".part"
	out, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return 0, fmt.Errorf("pull %s: %w", p.ref, err)
	}
	defer out.Close()
	var h hash.Hash
	switch {
	case f.SHA256 != "":
		h = sha256.New()
	case f.SHA1 != "" && f.Size >= 0:
		h = sha1.New()
		fmt.Fprintf(h, "blob %d\x00", f.Size)
	default:
		h = sha256.New()
	}
	// What the .part holds is hashed again, read once.
	have, err := io.CopyBuffer(h, out, make([]byte, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("pull %s: %w", p.ref, err)
	}
	if f.Size >= 0 && have > f.Size {
		return 0, &mismatch{file: f.Path, got: "a longer .part", want: strconv.FormatInt(f.Size, 10) + " bytes"}
	}
	if f.Size < 0 || have < f.Size {
		resp, err := p.get(ctx, u, fmt.Sprintf("bytes=%d-", have))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && f.Size < 0:
			// The .part was the whole file.
		case resp.StatusCode == http.StatusOK && have > 0:
			// The server ignores ranges: start over.
			if err := out.Truncate(0); err != nil {
				return 0, err
			}
			if _, err := out.Seek(0, io.SeekStart); err != nil {
				return 0, err
			}
			p.done -= have
			have = 0
			h.Reset()
			if f.SHA1 != "" && f.SHA256 == "" && f.Size >= 0 {
				fmt.Fprintf(h, "blob %d\x00", f.Size)
			}
			fallthrough
		case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent:
			if f.Size < 0 && resp.ContentLength >= 0 {
				p.total += have + resp.ContentLength
			}
			if _, err := out.Seek(have, io.SeekStart); err != nil {
				return 0, err
			}
			n, err := p.copy(out, io.TeeReader(resp.Body, h), f.Path)
			have += n
			if err != nil {
				if ctx.Err() != nil {
					return 0, ctx.Err()
				}
				return 0, fmt.Errorf("pull %s: %s: %w (run it again to resume)", p.ref, f.Path, err)
			}
		default:
			if err := statusErr(resp, p.ref.String(), f.Path); err != nil {
				return 0, err
			}
		}
	}
	if f.Size >= 0 && have != f.Size {
		return 0, fmt.Errorf("pull %s: %s: got %d bytes of %d (run it again to resume)", p.ref, f.Path, have, f.Size)
	}
	got := hex.EncodeToString(h.Sum(nil))
	want := f.SHA256
	if want == "" {
		want = f.SHA1
	}
	if want != "" && got != want {
		return 0, &mismatch{file: f.Path, got: got, want: want}
	}
	if err := out.Sync(); err != nil {
		return 0, fmt.Errorf("pull %s: %w", p.ref, err)
	}
	if err := os.Rename(part, target); err != nil {
		return 0, fmt.Errorf("pull %s: %w", p.ref, err)
	}
	return have, nil
}

// copy writes what r gives to out, counting it, with progress.
func (p *puller) copy(out io.Writer, r io.Reader, file string) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if _, werr := out.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
			p.done += int64(k)
			p.fetched += int64(k)
			p.report(file, false)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func (p *puller) report(file string, final bool) {
	if p.opts.Progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(p.last) < p.opts.ProgressEvery {
		return
	}
	p.last = now
	if p.rateAt.IsZero() {
		p.rateAt, p.rateFrom = p.started, p.resumed
	}
	if d := now.Sub(p.rateAt); d >= time.Second || final {
		p.rate = float64(p.done-p.rateFrom) / max(d.Seconds(), 1e-3)
		p.rateAt, p.rateFrom = now, p.done
	}
	p.opts.Progress(Progress{File: file, Done: p.done, Total: max(p.total, p.done), Resumed: p.resumed, Rate: p.rate})
}

func (p *puller) get(ctx context.Context, u, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", p.ref, err)
	}
	if p.opts.Token != "" && p.ref.Kind == "hf" {
		// Go drops it on a redirect to another host, as the hub wants
		// (its CDN takes signed URLs).
		req.Header.Set("Authorization", "Bearer "+p.opts.Token)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := p.opts.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", p.ref, err)
	}
	return resp, nil
}

// statusErr says what a hub's refusal means.
func statusErr(resp *http.Response, ref, file string) error {
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
		return nil
	}
	what := ref
	if file != "" {
		what += ": " + file
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	msg := strings.TrimSpace(string(body))
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("pull %s: %s: the hub wants a token with access (set HF_TOKEN on the node)", what, resp.Status)
	case http.StatusNotFound:
		return fmt.Errorf("pull %s: %s: no such repository, revision or file", what, resp.Status)
	case http.StatusTooManyRequests:
		return fmt.Errorf("pull %s: %s: the hub limits the rate; retry after %s", what, resp.Status, cmpOr(resp.Header.Get("Retry-After"), "a while"))
	}
	return fmt.Errorf("pull %s: %s: %s", what, resp.Status, msg)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// hidden reports whether a path names a hidden file or folder.
func hidden(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if strings.HasPrefix(part, ".") && part != "." && part != ".." {
			return true
		}
	}
	return false
}

func safeName(n string) error {
	if err := modeldir.SafePath(n); err != nil || strings.Contains(n, "/") {
		return fmt.Errorf("%q is not a name a models folder can hold", n)
	}
	return nil
}
