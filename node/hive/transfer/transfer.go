// Package transfer copies a model's files from the hives that hold it to
// this hive's models folder, over the cluster's mutual TLS: each file in
// blocks (the peers' listing gives every block's SHA-256), fetched with
// ranges from several peers at once, each block checked as it arrives and
// fetched again (from another peer) when it is wrong. A copy that breaks off
// resumes at the blocks it lacks; the model appears in the folder only when
// complete (a file renamed from .part, a folder from a dot-folder), so the
// catalog never sees half a model.
package transfer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/modeldir"
	"github.com/rbee/rbee/node/hive/models"
)

// Options are a copy's settings.
type Options struct {
	// Client reaches the peers (the cluster's TLS client).
	Client *http.Client
	// Peers are the base URLs (https://host:port) of hives whose catalog
	// has the model.
	Peers []string
	// Rate bounds the bytes per second over all peers (0: no bound).
	Rate int64
	// Progress is called at most every ProgressEvery (default 500 ms)
	// and once at the end.
	Progress      func(Progress)
	ProgressEvery time.Duration
	// StallTimeout gives up on a peer that sends nothing this long
	// (default 10 s): a peer cut off by the network sends no reset, and
	// its blocks go to the others.
	StallTimeout time.Duration
	// Gone, when set, is closed once the cluster declares peer dead: its
	// requests end then, sooner than StallTimeout.
	Gone   func(peer string) <-chan struct{}
	Logger *slog.Logger
}

// Progress is where a copy stands.
type Progress struct {
	File        string  `json:"file"`
	Done        int64   `json:"done"`
	Total       int64   `json:"total"`
	Resumed     int64   `json:"resumed"`
	Rate        float64 `json:"rate"`
	Peers       int     `json:"peers"`
	Refetched   int64   `json:"refetched,omitempty"`
	Description string  `json:"-"`
}

// Result is a finished copy.
type Result struct {
	// Name is the model's name (as the peers' catalogs have it, and as
	// models.ScanModelsDir names what the copy made); Path the file or
	// folder in the models folder.
	Name, Path string
	// Bytes is the model's size; Fetched what this copy downloaded (less
	// when it resumed); Refetched the part of it fetched again after a
	// block came wrong or a peer broke off.
	Bytes, Fetched, Refetched int64
	Files                     []models.ModelFile
}

// errStalled ends a request to a peer that sent nothing for StallTimeout;
// errPeerGone one to a peer the cluster declared dead.
var (
	errStalled  = errors.New("the peer sent nothing")
	errPeerGone = errors.New("the cluster declared the peer dead")
)

// ErrNoSpace is wrapped by a copy refused for want of disk space.
var ErrNoSpace = errors.New("not enough free disk space")

// statfs is swapped by tests.
var statfs = modeldir.Free

// listing is a peer's answer to GET /v1/hive/files/{model}.
type listing struct {
	Model string             `json:"model"`
	Files []models.ModelFile `json:"files"`
}

// Copy copies model from opts.Peers into the models folder dir.
func Copy(ctx context.Context, model, dir string, opts Options) (Result, error) {
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 500 * time.Millisecond
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = 10 * time.Second
	}
	if err := modeldir.SafePath(model); err != nil || strings.ContainsAny(model, "/:") {
		return Result{}, fmt.Errorf("copy %q: not a name a models folder can hold", model)
	}
	files, peers, err := list(ctx, model, opts)
	if err != nil {
		return Result{}, err
	}
	c := &copier{opts: opts, peers: peers}
	c.chunk = 1 << 20
	if opts.Rate > 0 {
		// A read waits for its bytes' tokens: no read may be larger
		// than the burst.
		burst := int(min(max(opts.Rate, 16<<10), 4<<20))
		c.limit, c.chunk = rate.NewLimiter(rate.Limit(opts.Rate), burst), min(c.chunk, burst)
	}
	res := Result{Name: model, Files: files}
	for _, f := range files {
		res.Bytes += f.Size
	}
	// A single GGUF file is the model file itself, named for the model;
	// anything else is a folder (a safetensors model).
	single := len(files) == 1 && strings.HasSuffix(files[0].Path, ".gguf") && !strings.Contains(files[0].Path, "/")
	var final, work string
	if single {
		final = filepath.Join(dir, model+".gguf")
		work = dir
	} else {
		final = filepath.Join(dir, model)
		work = filepath.Join(dir, "."+model+".partial")
	}
	if _, err := os.Stat(final); err == nil {
		return Result{}, fmt.Errorf("copy %s: %s exists already", model, final)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return Result{}, fmt.Errorf("copy %s: %w", model, err)
	}
	// Plan every file: where it goes, what of it is there already.
	plans := make([]*filePlan, len(files))
	var have int64
	for i, f := range files {
		target := filepath.Join(work, filepath.FromSlash(f.Path))
		if single {
			target = final
		}
		p, err := plan(f, target)
		if err != nil {
			return Result{}, fmt.Errorf("copy %s: %w", model, err)
		}
		plans[i] = p
		have += p.have
	}
	c.total, c.resumed = res.Bytes, have
	c.done.Store(have)
	if free, err := statfs(dir); err == nil {
		need := res.Bytes - have
		if need+need/100 > free {
			return Result{}, fmt.Errorf("copy %s: %w: needs %s, %s free in %s", model, ErrNoSpace, modeldir.Size(need), modeldir.Size(free), dir)
		}
	}
	c.started = time.Now()
	for _, p := range plans {
		if err := c.file(ctx, model, p); err != nil {
			return Result{}, err
		}
	}
	c.report(plans[len(plans)-1].f.Path, true)
	if !single {
		if err := os.Rename(work, final); err != nil {
			return Result{}, fmt.Errorf("copy %s: %w", model, err)
		}
	}
	res.Path, res.Fetched, res.Refetched = final, c.fetched.Load(), c.refetched.Load()
	return res, nil
}

// list asks every peer for the model's files; the first answer is the
// model, and a peer whose files differ from it is not used.
func list(ctx context.Context, model string, opts Options) ([]models.ModelFile, []string, error) {
	type answer struct {
		peer  string
		files []models.ModelFile
		err   error
	}
	// A peer hashes its files before it first lists them (minutes, for
	// a large model): the copy waits for the first answer, then at most
	// StallTimeout for the others (a cut-off peer never answers).
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan answer, len(opts.Peers))
	for _, peer := range opts.Peers {
		go func() {
			var l listing
			err := getJSON(lctx, opts.Client, peer+api.PathHiveFiles+"/"+url.PathEscape(model), &l)
			ch <- answer{peer, l.Files, err}
		}()
	}
	var answers []answer
	var late <-chan time.Time
	for len(answers) < len(opts.Peers) {
		select {
		case a := <-ch:
			answers = append(answers, a)
			if a.err == nil && late == nil {
				late = time.After(opts.StallTimeout)
			}
			continue
		case <-late:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		break
	}
	var files []models.ModelFile
	var peers []string
	var errs []error
	for _, a := range answers {
		if a.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.peer, a.err))
			continue
		}
		if err := checkListing(a.files); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.peer, err))
			continue
		}
		if files == nil {
			files = a.files
		} else if !sameFiles(files, a.files) {
			opts.Logger.Warn("a peer holds another version of the model; not copying from it", "model", model, "peer", a.peer)
			continue
		}
		peers = append(peers, a.peer)
	}
	if len(peers) == 0 {
		return nil, nil, fmt.Errorf("copy %s: no peer can serve it: %w", model, errors.Join(errs...))
	}
	return files, peers, nil
}

// checkListing refuses a listing whose paths would leave the model's folder
// or whose digests do not add up.
func checkListing(files []models.ModelFile) error {
	if len(files) == 0 {
		return errors.New("the model has no files")
	}
	for _, f := range files {
		if err := modeldir.SafePath(f.Path); err != nil {
			return err
		}
		if f.Size < 0 || f.BlockSize <= 0 {
			return fmt.Errorf("file %q: size %d, block size %d", f.Path, f.Size, f.BlockSize)
		}
		if want := max((f.Size+f.BlockSize-1)/f.BlockSize, 1); int64(len(f.Blocks)) != want {
			return fmt.Errorf("file %q: %d block digests for %d blocks", f.Path, len(f.Blocks), want)
		}
	}
	return nil
}

func sameFiles(a, b []models.ModelFile) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Path != b[i].Path || a[i].Size != b[i].Size || a[i].SHA256 != b[i].SHA256 || a[i].BlockSize != b[i].BlockSize {
			return false
		}
	}
	return true
}

// filePlan is one file of a copy.
type filePlan struct {
	f      models.ModelFile
	target string
	part   string // target + ".part"
	blocks string // part + ".blocks": the indices of the blocks written
	done   []bool
	have   int64 // bytes of the blocks done (all of it when the file is whole)
	whole  bool
}

func plan(f models.ModelFile, target string) (*filePlan, error) {
	p := &filePlan{f: f, target: target, part: target + ".part", blocks: target + ".part.blocks", done: make([]bool, len(f.Blocks))}
	if fi, err := os.Stat(target); err == nil && fi.Size() == f.Size {
		// A folder's file finished before the copy broke off.
		p.whole, p.have = true, f.Size
		return p, nil
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(p.part); err == nil && fi.Size() == f.Size {
		if b, err := os.ReadFile(p.blocks); err == nil {
			for line := range strings.Lines(string(b)) {
				if i, err := strconv.Atoi(strings.TrimSpace(line)); err == nil && i >= 0 && i < len(p.done) && !p.done[i] {
					p.done[i] = true
					p.have += blockLen(f, i)
				}
			}
		}
	}
	return p, nil
}

func blockLen(f models.ModelFile, i int) int64 {
	return min(f.BlockSize, f.Size-int64(i)*f.BlockSize)
}

// copier is one copy in progress.
type copier struct {
	opts  Options
	peers []string
	limit *rate.Limiter
	chunk int // the most one read takes

	total, resumed     int64
	done               atomic.Int64 // bytes of the model in place
	fetched, refetched atomic.Int64
	started            time.Time

	mu         sync.Mutex
	callMu     sync.Mutex // Progress is called by one goroutine at a time
	lastReport time.Time
	rateFrom   time.Time
	rateDone   int64
	rate       float64
}

// runBlocks is how many consecutive blocks one range request asks for:
// few requests, while each block is checked (and kept) as it arrives. A
// variable for tests.
var runBlocks = 16

// run is consecutive blocks [first, end) of a file, fetched in one range.
type run struct{ first, end int }

// file fetches what p lacks, in runs of blocks, one worker per live peer,
// then renames it into place.
func (c *copier) file(ctx context.Context, model string, p *filePlan) error {
	if p.whole {
		return nil
	}
	out, err := os.OpenFile(p.part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("copy %s: %w", model, err)
	}
	defer out.Close()
	if err := out.Truncate(p.f.Size); err != nil {
		return fmt.Errorf("copy %s: %w", model, err)
	}
	if p.have == 0 {
		// A .blocks file from another version of the .part is void.
		_ = os.Remove(p.blocks)
	}
	log, err := os.OpenFile(p.blocks, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("copy %s: %w", model, err)
	}
	defer log.Close()
	var runs []run
	for i, d := range p.done {
		switch {
		case d:
		case len(runs) > 0 && runs[len(runs)-1].end == i && i-runs[len(runs)-1].first < runBlocks:
			runs[len(runs)-1].end++
		default:
			runs = append(runs, run{i, i + 1})
		}
	}
	left := 0
	for _, r := range runs {
		left += r.end - r.first
	}
	// Each block is in the queue or with one worker, so the queue never
	// holds more than there are blocks.
	queue := make(chan run, len(p.done))
	for _, r := range runs {
		queue <- r
	}
	var (
		mu       sync.Mutex
		attempts = map[int]int{}
		finished = make(chan struct{})
	)
	if left == 0 {
		close(finished)
	}
	complete := func(i int) error {
		mu.Lock()
		defer mu.Unlock()
		if _, err := fmt.Fprintf(log, "%d\n", i); err != nil {
			return err
		}
		if left--; left == 0 {
			close(finished)
		}
		return nil
	}
	// retry puts the rest of a run back for any worker; false when its
	// first block broke off too often.
	retry := func(r run) bool {
		mu.Lock()
		defer mu.Unlock()
		attempts[r.first]++
		if attempts[r.first] >= 4 {
			return false
		}
		queue <- r
		return true
	}
	g, gctx := errgroup.WithContext(ctx)
	var alive atomic.Int32
	alive.Store(int32(len(c.peers)))
	for pi, peer := range c.peers {
		g.Go(func() error {
			buf := make([]byte, 1<<20)
			for {
				var r run
				select {
				case <-finished:
					return nil
				case <-gctx.Done():
					return gctx.Err()
				case r = <-queue:
				}
				next, bad, err := c.fetch(gctx, peer, model, p, r, out, buf, complete)
				if gctx.Err() != nil {
					return gctx.Err()
				}
				if bad >= 0 {
					// A block that came wrong is asked of the
					// other peers in turn (this one may hold a
					// bad copy), then of this one again.
					ok := false
					for k := 1; !ok && k <= len(c.peers); k++ {
						_, b2, e2 := c.fetch(gctx, c.peers[(pi+k)%len(c.peers)], model, p, run{bad, bad + 1}, out, buf, complete)
						ok = e2 == nil && b2 < 0
					}
					if !ok {
						return fmt.Errorf("copy %s: %s: block %d came wrong from every peer", model, p.f.Path, bad)
					}
					next = bad + 1
				}
				if next < r.end {
					if !retry(run{next, r.end}) {
						return fmt.Errorf("copy %s: %s: block %d broke off 4 times: %w", model, p.f.Path, next, err)
					}
				}
				if err != nil {
					// This peer broke off: the others go on.
					c.opts.Logger.Warn("a peer broke off a model copy; the others go on", "model", model, "peer", peer, "err", err)
					if alive.Add(-1) == 0 {
						return fmt.Errorf("copy %s: every peer broke off; last: %s: %w", model, peer, err)
					}
					return nil
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	select {
	case <-finished:
	default:
		return fmt.Errorf("copy %s: %s: unfinished", model, p.f.Path)
	}
	if err := syncFile(out); err != nil {
		return fmt.Errorf("copy %s: %w", model, err)
	}
	if err := os.Rename(p.part, p.target); err != nil {
		return fmt.Errorf("copy %s: %w", model, err)
	}
	_ = os.Remove(p.blocks)
	return nil
}

// fetch fetches run r of p from peer into out in one range request,
// checking each block as it arrives and completing it at once. It returns
// the first block it did not complete (r.end when all), the block that came
// wrong (-1 when none; the fetch stops there), and the error that broke it
// off.
func (c *copier) fetch(ctx context.Context, peer, model string, p *filePlan, r run, out *os.File, buf []byte,
	complete func(int) error) (next, bad int, err error) {
	next, bad = r.first, -1
	off := int64(r.first) * p.f.BlockSize
	end := min(int64(r.end)*p.f.BlockSize, p.f.Size)
	u := peer + api.PathHiveFiles + "/" + url.PathEscape(model) + "/" + modeldir.EscapePath(p.f.Path)
	// A watchdog ends the request when the peer goes quiet: a cut link
	// would otherwise hold this worker (and its blocks) for ever.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(c.opts.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	if c.opts.Gone != nil {
		gone := c.opts.Gone(peer)
		go func() {
			select {
			case <-gone:
				cancel(errPeerGone)
			case <-ctx.Done():
			}
		}()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return next, bad, err
	}
	if end > off {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
	}
	resp, err := c.opts.Client.Do(req)
	if err != nil {
		return next, bad, err
	}
	defer resp.Body.Close()
	if end > off && resp.StatusCode != http.StatusPartialContent || end == off && resp.StatusCode != http.StatusOK {
		return next, bad, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	w := io.NewOffsetWriter(out, off)
	for i := r.first; i < r.end; i++ {
		n := blockLen(p.f, i)
		h := sha256.New()
		var got int64
		for got < n {
			k, rerr := resp.Body.Read(buf[:min(int64(c.chunk), n-got)])
			if k > 0 {
				stall.Reset(c.opts.StallTimeout)
				if err := c.pace(ctx, k); err != nil {
					return i, -1, err
				}
				h.Write(buf[:k])
				if _, err := w.Write(buf[:k]); err != nil {
					return i, -1, err
				}
				got += int64(k)
				c.fetched.Add(int64(k))
			}
			if rerr != nil {
				if rerr == io.EOF && got == n {
					break
				}
				if rerr == io.EOF {
					rerr = io.ErrUnexpectedEOF
				}
				switch context.Cause(ctx) {
				case errStalled:
					rerr = fmt.Errorf("%w for %v", errStalled, c.opts.StallTimeout)
				case errPeerGone:
					rerr = errPeerGone
				}
				c.refetched.Add(got)
				return i, -1, fmt.Errorf("GET %s: %w", u, rerr)
			}
		}
		if hex.EncodeToString(h.Sum(nil)) != p.f.Blocks[i] {
			c.refetched.Add(got)
			c.opts.Logger.Warn("a block of a model copy came wrong; fetching it again", "model", model, "file", p.f.Path, "block", i, "peer", peer)
			return i, i, nil
		}
		if err := complete(i); err != nil {
			return i, -1, err
		}
		c.done.Add(n)
		c.report(p.f.Path, false)
	}
	return r.end, -1, nil
}

// pace waits until the rate limit allows n more bytes (at most the
// burst), or ctx ends.
func (c *copier) pace(ctx context.Context, n int) error {
	if c.limit == nil {
		return nil
	}
	r := c.limit.ReserveN(time.Now(), n)
	d := r.Delay()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

// report calls Progress when it is due (or final).
func (c *copier) report(file string, final bool) {
	if c.opts.Progress == nil {
		return
	}
	c.mu.Lock()
	now := time.Now()
	if !final && now.Sub(c.lastReport) < c.opts.ProgressEvery {
		c.mu.Unlock()
		return
	}
	c.lastReport = now
	done := c.done.Load()
	if c.rateFrom.IsZero() {
		c.rateFrom, c.rateDone = c.started, c.resumed
	}
	if d := now.Sub(c.rateFrom); d >= time.Second || final {
		c.rate = float64(done-c.rateDone) / max(d.Seconds(), 1e-3)
		c.rateFrom, c.rateDone = now, done
	}
	p := Progress{File: file, Done: done, Total: c.total, Resumed: c.resumed, Rate: c.rate, Peers: len(c.peers), Refetched: c.refetched.Load()}
	c.mu.Unlock()
	c.callMu.Lock()
	defer c.callMu.Unlock()
	c.opts.Progress(p)
}

func getJSON(ctx context.Context, client *http.Client, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(bufio.NewReader(io.LimitReader(resp.Body, 16<<20))).Decode(v)
}

// syncFile makes a file durable before it is renamed into place (a crash
// must leave a .part, never a half model); a benchmark swaps it to see what
// the sync costs.
var syncFile = func(f *os.File) error { return f.Sync() }
