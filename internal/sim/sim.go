package sim

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults, applied by New to zero fields of Config.
const (
	// DefaultSlots is llama-server's own default (--parallel 1): one
	// request at a time, the rest queue.
	DefaultSlots = 1
	// DefaultTokensPerSecond is not applied by New (a zero rate means
	// unpaced, what tests and benchmarks want); the CLI uses it. 20 tokens a
	// second reads like a 7B model on a consumer GPU and is slow enough to
	// watch in the demo.
	DefaultTokensPerSecond = 20
	// DefaultMaxTokens is the length of an answer when the request sets no
	// limit: long enough to stream visibly, short enough for tests.
	DefaultMaxTokens = 16
	// DefaultTotalVRAMMB is a 24 GiB card (RTX 3090/4090, A10).
	DefaultTotalVRAMMB = 24576
	// DefaultModelVRAMMB is a 7B model quantised to 4 bits.
	DefaultModelVRAMMB = 4096
	// DefaultSlotVRAMMB is the KV cache a busy slot adds: a 4k context of
	// an 8B model with grouped-query attention at f16.
	DefaultSlotVRAMMB = 512
	// DefaultEmbeddingDim is the size of all-MiniLM-L6-v2's vectors, a
	// common small embedding model.
	DefaultEmbeddingDim = 384
	// DefaultPrefillPerToken is prompt processing on a consumer GPU: about
	// a thousand tokens a second for a 7B model, so a 4k-token
	// conversation's next turn waits 4 s uncached and next to nothing
	// cached.
	DefaultPrefillPerToken = time.Millisecond
	// DefaultPrefixCacheTokens is 16 full 4k contexts: a worker keeps a
	// handful of conversations, and a router that scatters more of them
	// than that loses the cache, as with a real one.
	DefaultPrefixCacheTokens = 65536
)

// Bounds on Config and on what a request may ask for.
const (
	// MaxTokensCap bounds the tokens one request generates, whatever its
	// max_tokens says, so that a request cannot hold a slot for hours.
	MaxTokensCap = 4096
	// maxSlots matches what a hive accepts for a worker's slots.
	maxSlots = 4096
	// maxEmbeddingDim bounds the vectors a request can make us compute.
	maxEmbeddingDim = 65536
	// contextSize is the per-slot context /props reports (n_ctx).
	contextSize = 4096
	// minTokensPerSecond and maxTTFT keep a request's schedule (TTFT plus
	// MaxTokensCap gaps) far inside time.Duration.
	minTokensPerSecond = 0.01
	maxTTFT            = 24 * time.Hour
	// maxLoadTime bounds Config.LoadTime.
	maxLoadTime = 24 * time.Hour
	// maxPrefillPerToken and maxPrefixCacheTokens bound the prefix cache's
	// settings: a second a token is slower than any real model, and 16M
	// tokens of cache are some 100 MB of our memory.
	maxPrefillPerToken   = time.Second
	maxPrefixCacheTokens = 1 << 24
)

// Config describes the simulated worker. Zero values take the defaults above
// (TokensPerSecond excepted: zero means unpaced).
type Config struct {
	// Model is the name the worker serves (/v1/models, /props). Required.
	// Requests may name any model; their name is echoed back.
	Model string
	// Slots is how many requests generate at once; more wait for a slot,
	// as llama-server queues them. Default DefaultSlots.
	Slots int
	// TokensPerSecond is each request's generation speed. Zero or negative
	// generates as fast as possible.
	TokensPerSecond float64
	// TTFT is the time from getting a slot to the first token (prompt
	// processing). Default 0.
	TTFT time.Duration
	// MaxTokens is the answer's length when a request sets neither
	// max_tokens nor max_completion_tokens. Default DefaultMaxTokens, at
	// most MaxTokensCap.
	MaxTokens int
	// TotalVRAMMB is the simulated GPU's memory. Default DefaultTotalVRAMMB.
	TotalVRAMMB uint64
	// ModelVRAMMB is the simulated weights' share of it, used even when
	// idle. Default DefaultModelVRAMMB.
	ModelVRAMMB uint64
	// SlotVRAMMB is the KV cache each busy slot adds. Default
	// DefaultSlotVRAMMB.
	SlotVRAMMB uint64
	// EmbeddingDim is the length of /v1/embeddings vectors. Default
	// DefaultEmbeddingDim.
	EmbeddingDim int
	// LoadTime is how long the simulated model takes to load: until then
	// the server answers /health, /v1/models and every inference route with
	// 503 {"error":{"message":"Loading model","type":"unavailable_error","code":503}}
	// as llama-server does; GET /health answers {"status":"ok"} with 200
	// once loaded. The clock starts in New. /props and every other
	// llama-server path answer 503 too; the simulator's own /rbee/sim/
	// endpoints answer throughout (the weights' VRAM counts from the
	// start, as they are being loaded). Default 0: loaded at once.
	LoadTime time.Duration
	// PrefixCache simulates llama-server's prompt (KV) cache: the time to
	// first token of a chat completion, completion or response grows by
	// PrefillPerToken for each prompt token not in this worker's cache,
	// which holds the prompts it has answered and each with its answer
	// (the start of the conversation's next turn). Prompts match by their
	// first tokens, in blocks of 16. Off: TTFT alone, as before.
	PrefixCache bool
	// PrefillPerToken is the time to process one uncached prompt token.
	// Default DefaultPrefillPerToken when PrefixCache is on.
	PrefillPerToken time.Duration
	// PrefixCacheTokens is the cache's size in tokens, the least recently
	// used evicted first. Default DefaultPrefixCacheTokens when
	// PrefixCache is on.
	PrefixCacheTokens int
}

func (c Config) withDefaults() Config {
	if c.Slots == 0 {
		c.Slots = DefaultSlots
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = DefaultMaxTokens
	}
	if c.TotalVRAMMB == 0 {
		c.TotalVRAMMB = DefaultTotalVRAMMB
	}
	if c.ModelVRAMMB == 0 {
		c.ModelVRAMMB = DefaultModelVRAMMB
	}
	if c.SlotVRAMMB == 0 {
		c.SlotVRAMMB = DefaultSlotVRAMMB
	}
	if c.EmbeddingDim == 0 {
		c.EmbeddingDim = DefaultEmbeddingDim
	}
	if c.PrefixCache && c.PrefillPerToken == 0 {
		c.PrefillPerToken = DefaultPrefillPerToken
	}
	if c.PrefixCache && c.PrefixCacheTokens == 0 {
		c.PrefixCacheTokens = DefaultPrefixCacheTokens
	}
	return c
}

func (c Config) validate() error {
	switch {
	case strings.TrimSpace(c.Model) == "":
		return errors.New("model is required")
	case len(c.Model) > 512 || strings.ContainsFunc(c.Model, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("model %q: want at most 512 printable bytes", c.Model)
	case c.Slots < 1 || c.Slots > maxSlots:
		return fmt.Errorf("slots %d: want 1 to %d", c.Slots, maxSlots)
	case math.IsNaN(c.TokensPerSecond) || math.IsInf(c.TokensPerSecond, 0) ||
		(c.TokensPerSecond > 0 && c.TokensPerSecond < minTokensPerSecond):
		return fmt.Errorf("tokens per second %v: want at least %v, or 0 for as fast as possible", c.TokensPerSecond, minTokensPerSecond)
	case c.TTFT < 0 || c.TTFT > maxTTFT:
		return fmt.Errorf("ttft %v: want 0 to %v", c.TTFT, maxTTFT)
	case c.MaxTokens < 1 || c.MaxTokens > MaxTokensCap:
		return fmt.Errorf("max tokens %d: want 1 to %d", c.MaxTokens, MaxTokensCap)
	case c.ModelVRAMMB > c.TotalVRAMMB:
		return fmt.Errorf("model vram %d MiB: more than the %d MiB total", c.ModelVRAMMB, c.TotalVRAMMB)
	case c.EmbeddingDim < 1 || c.EmbeddingDim > maxEmbeddingDim:
		return fmt.Errorf("embedding dim %d: want 1 to %d", c.EmbeddingDim, maxEmbeddingDim)
	case c.LoadTime < 0 || c.LoadTime > maxLoadTime:
		return fmt.Errorf("load time %v: want 0 to %v", c.LoadTime, maxLoadTime)
	case c.PrefillPerToken < 0 || c.PrefillPerToken > maxPrefillPerToken:
		return fmt.Errorf("prefill per token %v: want 0 to %v", c.PrefillPerToken, maxPrefillPerToken)
	case c.PrefixCacheTokens < 0 || c.PrefixCacheTokens > maxPrefixCacheTokens ||
		(c.PrefixCache && c.PrefixCacheTokens < blockTokens):
		return fmt.Errorf("prefix cache tokens %d: want %d to %d", c.PrefixCacheTokens, blockTokens, maxPrefixCacheTokens)
	}
	return nil
}

// Stats counts inference requests (chat completions, completions,
// responses, embeddings) since the Simulator was made. A request is counted out when
// its handler returns, which can be just after its client has read the last
// byte: a test waits for the figures it expects rather than reading them
// once.
type Stats struct {
	// InFlight is the requests inside a handler now, waiting for a slot
	// or generating.
	InFlight int64 `json:"in_flight"`
	// Peak is the most InFlight has ever been (since ResetPeak): what a
	// router sent at once, whether or not slots were free.
	Peak int64 `json:"peak"`
	// Active is the requests holding a slot now; never more than Slots.
	Active int64 `json:"active"`
	// Served is the requests answered in full.
	Served int64 `json:"served"`
	// Cancelled is the requests whose client went away first.
	Cancelled int64 `json:"cancelled"`
	// Aborted is the requests broken off by AbortAll.
	Aborted int64 `json:"aborted"`
	// Rejected is the requests refused for their body (400, 413).
	Rejected int64 `json:"rejected"`

	// The token counters add up the usage of the requests served in full
	// (as their answers report it); a request cancelled or aborted adds
	// nothing.

	// PromptTokens is their prompt tokens (embeddings' inputs included).
	PromptTokens int64 `json:"prompt_tokens"`
	// CompletionTokens is the tokens they generated.
	CompletionTokens int64 `json:"completion_tokens"`
	// PromptTokensCached is the prompt tokens found in the prefix cache
	// (Config.PrefixCache), PromptTokensComputed the rest: the two add up
	// to PromptTokens. With the cache off, all are computed.
	PromptTokensCached   int64 `json:"prompt_tokens_cached"`
	PromptTokensComputed int64 `json:"prompt_tokens_computed"`
}

// Simulator is one simulated worker. Its methods are safe for concurrent
// use.
type Simulator struct {
	cfg      Config
	interval time.Duration // between tokens; 0 when unpaced
	created  int64         // Unix seconds, for /v1/models
	loadedAt time.Time     // when the simulated model is loaded (monotonic)
	idPrefix string        // makes response ids unique across simulators
	slots    chan struct{} // a send takes a slot
	prefix   *prefixCache  // nil unless Config.PrefixCache
	mux      *http.ServeMux

	ids                                      atomic.Uint64
	inFlight, peak, active                   atomic.Int64
	nServed, nCancelled, nAborted, nRejected atomic.Int64
	nPrompt, nCompletion, nCached, nComputed atomic.Int64

	abortMu sync.Mutex
	abortCh chan struct{}      // closed by AbortAll, then replaced
	calls   map[*call]struct{} // inference requests in their handler
}

// New checks cfg and makes a Simulator.
func New(cfg Config) (*Simulator, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("simulator config: %w", err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	now := time.Now()
	s := &Simulator{
		cfg:      cfg,
		created:  now.Unix(),
		loadedAt: now.Add(cfg.LoadTime),
		idPrefix: hex.EncodeToString(b[:]),
		slots:    make(chan struct{}, cfg.Slots),
		abortCh:  make(chan struct{}),
		calls:    make(map[*call]struct{}),
	}
	if cfg.PrefixCache {
		s.prefix = newPrefixCache(cfg.PrefixCacheTokens)
	}
	if cfg.TokensPerSecond > 0 {
		s.interval = time.Duration(float64(time.Second) / cfg.TokensPerSecond)
	}
	s.mux = s.routes()
	return s, nil
}

// Config returns the configuration in use, defaults applied.
func (s *Simulator) Config() Config { return s.cfg }

// LoadedAt returns when the simulated model is (or was) loaded: New's time
// plus Config.LoadTime. Until then the API answers 503.
func (s *Simulator) LoadedAt() time.Time { return s.loadedAt }

// Loaded reports whether the simulated model has loaded.
func (s *Simulator) Loaded() bool { return !time.Now().Before(s.loadedAt) }

// Stats returns the counters now. Fields are read one by one, so a snapshot
// taken under load may be off by a request between fields.
func (s *Simulator) Stats() Stats {
	return Stats{
		InFlight:  s.inFlight.Load(),
		Peak:      s.peak.Load(),
		Active:    s.active.Load(),
		Served:    s.nServed.Load(),
		Cancelled: s.nCancelled.Load(),
		Aborted:   s.nAborted.Load(),
		Rejected:  s.nRejected.Load(),

		PromptTokens:         s.nPrompt.Load(),
		CompletionTokens:     s.nCompletion.Load(),
		PromptTokensCached:   s.nCached.Load(),
		PromptTokensComputed: s.nComputed.Load(),
	}
}

// ResetPeak restarts Peak from the requests in flight now.
func (s *Simulator) ResetPeak() {
	// Zero first, then raise to what is in flight: a request entering
	// meanwhile either is counted by the Load or raises Peak itself after
	// the Store.
	s.peak.Store(0)
	s.raisePeak(s.inFlight.Load())
}

// AbortAll breaks off every inference request in flight, waiting or
// generating: its connection is closed without finishing the response, so a
// client sees a stream end mid-way, as when a worker dies. A response
// blocked on a client that does not read is broken off too. Requests that
// arrive afterwards are served normally. The handlers break off by
// panicking with http.ErrAbortHandler, which net/http's server recovers
// silently; anything else running Handler must do the same.
func (s *Simulator) AbortAll() {
	s.abortMu.Lock()
	defer s.abortMu.Unlock()
	close(s.abortCh)
	s.abortCh = make(chan struct{})
	for c := range s.calls {
		// Unblocks a write in progress; the handler then sees the abort.
		// The call is still in its handler (it leaves calls first), so
		// the connection is still its own.
		_ = c.rc.SetWriteDeadline(time.Now())
	}
}

// register enters c among the requests AbortAll reaches.
func (s *Simulator) register(c *call) {
	s.abortMu.Lock()
	defer s.abortMu.Unlock()
	c.abort = s.abortCh
	s.calls[c] = struct{}{}
}

func (s *Simulator) unregister(c *call) {
	s.abortMu.Lock()
	defer s.abortMu.Unlock()
	delete(s.calls, c)
}

func (s *Simulator) raisePeak(n int64) {
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// outcome is how an inference request ended, for Stats.
type outcome int

const (
	served outcome = iota
	rejected
	cancelled
	aborted
)

// HeaderReceived on every inference answer is when the simulator got the
// request, in Unix nanoseconds.
const HeaderReceived = "X-Sim-Received"

// call is one inference request in flight.
type call struct {
	abort <-chan struct{}          // closed by AbortAll
	rc    *http.ResponseController // of its response
}

// inference wraps an inference endpoint: it counts the request from entry
// to exit and, when AbortAll broke it off, kills its connection.
func (s *Simulator) inference(h func(http.ResponseWriter, *http.Request, *call) outcome) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			methodNotAllowed(w, http.MethodPost)
			return
		}
		// When the request reached the worker, for benchmarks that time
		// the path to it (rbee's cold-start figures).
		w.Header().Set(HeaderReceived, strconv.FormatInt(time.Now().UnixNano(), 10))
		s.raisePeak(s.inFlight.Add(1))
		defer s.inFlight.Add(-1)
		c := &call{rc: http.NewResponseController(w)}
		s.register(c)
		defer s.unregister(c) // on a panic; unregistering twice is harmless
		o := h(w, r, c)
		// Out of AbortAll's reach first, then look: a call AbortAll
		// reached (its write deadline set, or about to be) is always
		// aborted, so its connection is never reused with that deadline.
		s.unregister(c)
		select {
		case <-c.abort:
			o = aborted
		default:
		}
		switch o {
		case served:
			s.nServed.Add(1)
		case rejected:
			s.nRejected.Add(1)
		case cancelled:
			s.nCancelled.Add(1)
		case aborted:
			s.nAborted.Add(1)
			// net/http closes the connection without ending the
			// response and does not log this panic.
			panic(http.ErrAbortHandler)
		}
	})
}

// acquire waits for a slot. It returns served when the caller holds one and
// must call release.
func (s *Simulator) acquire(r *http.Request, c *call) outcome {
	select {
	case <-c.abort:
		return aborted
	default:
	}
	select {
	case s.slots <- struct{}{}:
		s.active.Add(1)
		return served
	case <-r.Context().Done():
		return cancelled
	case <-c.abort:
		return aborted
	}
}

func (s *Simulator) release() {
	s.active.Add(-1)
	<-s.slots
}

// nextID returns a response id such as chatcmpl-1a2b3c4d-7.
func (s *Simulator) nextID(prefix string) string {
	return fmt.Sprintf("%s-%s-%d", prefix, s.idPrefix, s.ids.Add(1))
}
