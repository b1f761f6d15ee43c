package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/internal/sim"
)

// simShutdownGrace is how long a stopping simulator lets streams in flight
// finish before it breaks them off.
const simShutdownGrace = 5 * time.Second

func simulateCommand() *cli.Command {
	return &cli.Command{
		Name:  "simulate",
		Usage: "run a simulated worker: llama-server's HTTP API, streaming made-up tokens, with no model or GPU",
		Description: "The simulator serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models,\n" +
			"/props and /health as llama-server does, with --slots requests at a time (more wait), and\n" +
			"made-up GPU figures on /rbee/sim/gpu that a hive reports marked simulated. Name it to a node\n" +
			"with --worker http://HOST:PORT[,model=NAME].",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", EnvVars: []string{"RBEE_SIM_MODEL"}, Required: true, Usage: "model name it serves"},
			&cli.StringFlag{Name: "host", EnvVars: []string{"RBEE_SIM_HOST"}, Value: "127.0.0.1", Usage: "address to listen on"},
			&cli.IntFlag{Name: "port", EnvVars: []string{"RBEE_SIM_PORT"}, Value: 8080, Usage: "port to listen on (0 picks a free one; the log says which)"},
			&cli.IntFlag{Name: "slots", EnvVars: []string{"RBEE_SIM_SLOTS"}, Value: sim.DefaultSlots, Usage: "requests generated at once; more wait, as with llama-server --parallel"},
			&cli.Float64Flag{Name: "tokens-per-second", EnvVars: []string{"RBEE_SIM_TOKENS_PER_SECOND"}, Value: sim.DefaultTokensPerSecond, Usage: "generation speed of each request (0: as fast as possible)"},
			&cli.IntFlag{Name: "ttft-ms", EnvVars: []string{"RBEE_SIM_TTFT_MS"}, Usage: "milliseconds before the first token (prompt processing)"},
			&cli.IntFlag{Name: "load-ms", EnvVars: []string{"RBEE_SIM_LOAD_MS"}, Usage: "milliseconds before the model is loaded: /health and every API answer 503 until then, as llama-server does while it loads"},
			&cli.IntFlag{Name: "max-tokens", EnvVars: []string{"RBEE_SIM_MAX_TOKENS"}, Value: sim.DefaultMaxTokens, Usage: fmt.Sprintf("tokens in an answer when the request sets no max_tokens (at most %d)", sim.MaxTokensCap)},
			&cli.Uint64Flag{Name: "vram-mb", EnvVars: []string{"RBEE_SIM_VRAM_MB"}, Value: sim.DefaultTotalVRAMMB, Usage: "simulated GPU memory, MiB"},
			&cli.Uint64Flag{Name: "model-vram-mb", EnvVars: []string{"RBEE_SIM_MODEL_VRAM_MB"}, Value: sim.DefaultModelVRAMMB, Usage: "simulated weights, MiB (each busy slot adds a KV cache)"},
			&cli.IntFlag{Name: "embedding-dim", EnvVars: []string{"RBEE_SIM_EMBEDDING_DIM"}, Value: sim.DefaultEmbeddingDim, Usage: "length of /v1/embeddings vectors"},
			&cli.BoolFlag{Name: "prefix-cache", EnvVars: []string{"RBEE_SIM_PREFIX_CACHE"}, Usage: "simulate a prompt (KV) cache: time to first token grows with the prompt tokens this worker has not seen before"},
			&cli.Float64Flag{Name: "prefill-ms-per-token", EnvVars: []string{"RBEE_SIM_PREFILL_MS_PER_TOKEN"}, Value: float64(sim.DefaultPrefillPerToken) / float64(time.Millisecond), Usage: "with --prefix-cache: milliseconds to process each prompt token not in the cache"},
			&cli.IntFlag{Name: "prefix-cache-tokens", EnvVars: []string{"RBEE_SIM_PREFIX_CACHE_TOKENS"}, Value: sim.DefaultPrefixCacheTokens, Usage: "with --prefix-cache: tokens the cache holds, least recently used evicted first"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"RBEE_LOG_LEVEL"}, Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", EnvVars: []string{"RBEE_LOG_FORMAT"}, Value: "text", Usage: "text or json"},
		},
		Action: runSimulate,
	}
}

func runSimulate(c *cli.Context) error {
	log, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return err
	}
	if c.Int("ttft-ms") < 0 {
		return fmt.Errorf("--ttft-ms %d: want 0 or more", c.Int("ttft-ms"))
	}
	if c.Int("load-ms") < 0 {
		return fmt.Errorf("--load-ms %d: want 0 or more", c.Int("load-ms"))
	}
	prefill := c.Float64("prefill-ms-per-token")
	if math.IsNaN(prefill) || prefill < 0 || prefill > 1000 {
		return fmt.Errorf("--prefill-ms-per-token %v: want 0 to 1000", prefill)
	}
	port := c.Int("port")
	if port < 0 || port > 65535 {
		return fmt.Errorf("--port %d: want 0 to 65535", port)
	}
	s, err := sim.New(sim.Config{
		Model:           c.String("model"),
		Slots:           c.Int("slots"),
		TokensPerSecond: c.Float64("tokens-per-second"),
		TTFT:            time.Duration(c.Int("ttft-ms")) * time.Millisecond,
		MaxTokens:       c.Int("max-tokens"),
		TotalVRAMMB:     c.Uint64("vram-mb"),
		ModelVRAMMB:     c.Uint64("model-vram-mb"),
		EmbeddingDim:    c.Int("embedding-dim"),
		LoadTime:        time.Duration(c.Int("load-ms")) * time.Millisecond,

		PrefixCache:       c.Bool("prefix-cache"),
		PrefillPerToken:   time.Duration(prefill * float64(time.Millisecond)),
		PrefixCacheTokens: c.Int("prefix-cache-tokens"),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(c.String("host"), strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signalContext(log)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	cfg := s.Config()
	log.Info("simulated worker listening", "url", "http://"+ln.Addr().String(), "model", cfg.Model,
		"slots", cfg.Slots, "tokens_per_second", cfg.TokensPerSecond, "load_time", cfg.LoadTime,
		"prefix_cache", cfg.PrefixCache)

	// The server answers 503 until the model is loaded; say when it is.
	var loaded <-chan time.Time
	if cfg.LoadTime > 0 {
		t := time.NewTimer(time.Until(s.LoadedAt()))
		defer t.Stop()
		loaded = t.C
	}
wait:
	for {
		select {
		case err := <-served:
			return fmt.Errorf("serve: %w", err)
		case <-loaded:
			log.Info("model loaded", "model", cfg.Model, "load_time", cfg.LoadTime)
			loaded = nil
		case <-ctx.Done():
			break wait
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), simShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("streams still running after the grace period; breaking them off", "grace", simShutdownGrace)
		s.AbortAll()
		_ = srv.Close() // the listener is closed already; Close only ends connections
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	st := s.Stats()
	log.Info("simulated worker stopped", "served", st.Served, "cancelled", st.Cancelled, "aborted", st.Aborted, "peak", st.Peak,
		"prompt_tokens", st.PromptTokens, "prompt_tokens_cached", st.PromptTokensCached, "completion_tokens", st.CompletionTokens)
	return nil
}
