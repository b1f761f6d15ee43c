package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/gossip"
	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/node/tracing"
	"github.com/rbee/rbee/wsapi"
)

func keyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "cluster-key-file", EnvVars: []string{"RBEE_CLUSTER_KEY_FILE"}, Usage: "file holding the cluster key (made by rbee keygen)"},
		&cli.StringFlag{Name: "cluster-key", EnvVars: []string{"RBEE_CLUSTER_KEY"}, Usage: "the cluster key itself (prefer --cluster-key-file: flags show in ps)"},
	}
}

func clientFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "http-addr", EnvVars: []string{"RBEE_HTTP_ADDR"}, Value: fmt.Sprintf("127.0.0.1:%d", api.DefaultHTTPPort), Usage: "HTTP address of the node to talk to"},
	}, keyFlags()...)
}

func loadKey(c *cli.Context) (wsapi.Key, error) {
	s, path := c.String("cluster-key"), c.String("cluster-key-file")
	if s != "" && path != "" {
		return wsapi.Key{}, errors.New("--cluster-key and --cluster-key-file both given: use one (the file keeps the key out of ps)")
	}
	if s != "" {
		return wsapi.ParseKey(s)
	}
	if path == "" {
		return wsapi.Key{}, nil
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		// Whoever reads the key can join, read and steer the cluster.
		slog.Warn("the cluster key file can be read by others; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return wsapi.Key{}, fmt.Errorf("read cluster key: %w", err)
	}
	k, err := wsapi.ParseKey(string(b))
	if err != nil {
		return wsapi.Key{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "run a node, or talk to a running one",
		Subcommands: []*cli.Command{
			nodeRunCommand(),
			nodeInstallCommand(),
			nodeUninstallCommand(),
			{
				Name:  "members",
				Usage: "list the cluster's members as the node sees them",
				Flags: append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}),
				Action: func(c *cli.Context) error {
					cl, err := newClient(c)
					if err != nil {
						return err
					}
					ms, err := cl.Members(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						enc := json.NewEncoder(c.App.Writer)
						enc.SetIndent("", "  ")
						return enc.Encode(ms)
					}
					return printMembers(c.App.Writer, ms)
				},
			},
			{
				Name:      "join",
				Usage:     "ask the running node to join the cluster at ADDR (gossip host:port)",
				ArgsUsage: "ADDR [ADDR...]",
				Flags:     clientFlags(),
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return errors.New("join: give at least one gossip address (host:port)")
					}
					cl, err := newClient(c)
					if err != nil {
						return err
					}
					n, err := cl.Join(c.Context, c.Args().Slice())
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "joined: %d node(s) answered\n", n)
					return nil
				},
			},
			{
				Name:  "leave",
				Usage: "ask the running node to leave the cluster gracefully and stop",
				Flags: append(clientFlags(), &cli.DurationFlag{Name: "drain", Value: shutdownDrain,
					Usage: "how long requests in flight on the node may take to finish (0: cut them)"}),
				Action: func(c *cli.Context) error {
					cl, err := newClient(c)
					if err != nil {
						return err
					}
					if err := cl.Leave(c.Context, c.Duration("drain")); err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, "node is leaving the cluster")
					return nil
				},
			},
		},
	}
}

func newClient(c *cli.Context) (*api.Client, error) {
	key, err := loadKey(c)
	if err != nil {
		return nil, err
	}
	return api.NewClient(httpAddrFlag(c), key), nil
}

// httpAddrFlag is --http-addr, with a bare ":port" meaning this machine.
func httpAddrFlag(c *cli.Context) string {
	addr := c.String("http-addr")
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	return addr
}

func printMembers(w interface{ Write([]byte) (int, error) }, ms []api.MemberView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tHTTP\tROLES\tSTATUS\tQUEEN")
	for _, m := range ms {
		q := ""
		if m.Queen {
			q = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.GossipAddr, m.HTTPAddr, strings.Join(m.Roles, ","), m.Status, q)
	}
	return tw.Flush()
}

func nodeRunCommand() *cli.Command {
	host, _ := os.Hostname()
	return &cli.Command{
		Name:  "run",
		Usage: "run a node: join the cluster, report this machine's workers, serve the API",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "name", EnvVars: []string{"RBEE_NAME"}, Value: sanitizeName(host), Usage: "node name, unique in the cluster"},
			&cli.StringFlag{Name: "gossip-addr", EnvVars: []string{"RBEE_GOSSIP_ADDR"}, Usage: fmt.Sprintf("gossip bind address (default :%d with a cluster key, 127.0.0.1:%d without)", api.DefaultGossipPort, api.DefaultGossipPort)},
			&cli.StringFlag{Name: "advertise-addr", EnvVars: []string{"RBEE_ADVERTISE_ADDR"}, Usage: "gossip address the other nodes should dial, if not the bind address"},
			&cli.StringFlag{Name: "http-addr", EnvVars: []string{"RBEE_HTTP_ADDR"}, Usage: fmt.Sprintf("HTTP bind address (default :%d with a cluster key, 127.0.0.1:%d without)", api.DefaultHTTPPort, api.DefaultHTTPPort)},
			&cli.StringSliceFlag{Name: "join", EnvVars: []string{"RBEE_JOIN"}, Usage: "gossip address of a member to join (repeat or comma-separate)"},
			&cli.StringFlag{Name: "discover", EnvVars: []string{"RBEE_DISCOVER"}, Value: node.DiscoverAuto, Usage: "find the cluster's other nodes on the LAN by multicast DNS: auto (with a cluster key and no --join), mdns (also beside --join) or off (networks where multicast is unwelcome)"},
			&cli.StringFlag{Name: "data-dir", EnvVars: []string{"RBEE_DATA_DIR"}, Usage: "where the node remembers the members it knew, to rejoin them after a restart without --join"},
			&cli.StringSliceFlag{Name: "roles", EnvVars: []string{"RBEE_ROLES"}, Value: cli.NewStringSlice("queen", "hive"), Usage: "queen (may be elected) and/or hive (reports workers), or none (serves the API only)"},
			&cli.StringFlag{Name: "gossip-profile", EnvVars: []string{"RBEE_GOSSIP_PROFILE"}, Value: gossip.ProfileLAN, Usage: "failure detection tuning: lan (one site: a dead node is found in about 1 s) or wan (round trips of hundreds of ms between nodes: about 40 s, and no false deaths); --print-config shows the figures"},
			&cli.IntFlag{Name: "queen-priority", EnvVars: []string{"RBEE_QUEEN_PRIORITY"}, Usage: "higher is preferred as queen; ties go to the oldest node"},
			&cli.BoolFlag{Name: "insecure", EnvVars: []string{"RBEE_INSECURE"}, Usage: "allow listening beyond loopback without a cluster key"},
			&cli.StringFlag{Name: "tls-cert", EnvVars: []string{"RBEE_TLS_CERT"}, Usage: "your certificate (PEM) for clients of the API, served as TLS on the --http-addr port beside plain HTTP; traffic between nodes needs none"},
			&cli.StringFlag{Name: "tls-key", EnvVars: []string{"RBEE_TLS_KEY"}, Usage: "the private key (PEM) of --tls-cert"},
			&cli.StringSliceFlag{Name: "worker", EnvVars: []string{"RBEE_WORKER"}, Usage: "a server rbee did not start: URL[,model=NAME][,slots=N][,group=G][,instance=I] (repeat; env: separate with ;)"},
			&cli.StringSliceFlag{Name: "api-key", EnvVars: []string{"RBEE_API_KEYS", "RBEE_API_KEY"}, Usage: "bearer key OpenAI clients must send (repeat or comma-separate); default: the cluster token, or none on loopback"},
			&cli.StringFlag{Name: "api-keys-file", EnvVars: []string{"RBEE_API_KEYS_FILE"}, Usage: "API keys as tenants (TOML, one [[key]] table each: name, key or sha256, priority, weight, max_concurrent, requests_per_minute, models); read again when it changes or on SIGHUP"},
			&cli.DurationFlag{Name: "affinity-wait", EnvVars: []string{"RBEE_AFFINITY_WAIT"}, Value: time.Second, Usage: "how long a conversation's next turn may wait for the worker that holds its prompt in its KV cache (0: never wait, but still prefer it when free; negative: no affinity, the least-loaded worker serves every turn)"},
			&cli.IntFlag{Name: "grant-ahead", EnvVars: []string{"RBEE_GRANT_AHEAD"}, Value: node.DefaultGrantAhead, Usage: "requests the queen grants each worker beyond its slots while all of a model's workers are busy: the next one waits at the hive and starts the moment a slot frees, without a round trip to the queen (only for models whose requests end within a second; 0: never)"},
			&cli.IntFlag{Name: "spare-leases", EnvVars: []string{"RBEE_SPARE_LEASES"}, Value: proxy.DefaultSpares, Usage: "leases this node, as entry node, may hold per model ahead of its clients' requests, so that a short request starts without a round trip to the queen; the queen lends them only while nothing of the model waits and takes them back when something does (0: never)"},
			&cli.IntFlag{Name: "queue-limit", EnvVars: []string{"RBEE_QUEUE_LIMIT"}, Value: 1024, Usage: "requests that may wait per model before 429"},
			&cli.DurationFlag{Name: "queue-timeout", EnvVars: []string{"RBEE_QUEUE_TIMEOUT"}, Value: 30 * time.Second, Usage: "how long a request waits for a free worker before 503"},
			&cli.IntFlag{Name: "body-memory", EnvVars: []string{"RBEE_BODY_MEMORY"}, Value: proxy.DefaultBodyMemory >> 20, Usage: "MiB of request bodies the node holds at once; more get 503 with Retry-After"},
			&cli.DurationFlag{Name: "body-timeout", EnvVars: []string{"RBEE_BODY_TIMEOUT"}, Value: proxy.DefaultBodyTimeout, Usage: "how long reading one request body may take before 408"},
			&cli.IntFlag{Name: "body-min-rate", EnvVars: []string{"RBEE_BODY_MIN_RATE"}, Value: proxy.DefaultBodyMinRate >> 10, Usage: "KiB/s a request body must keep up after a grace of a twelfth of --body-timeout; slower gets 408"},
			&cli.IntFlag{Name: "migration-limit", EnvVars: []string{"RBEE_MIGRATION_LIMIT"}, Value: proxy.DefaultMigrationLimit, Usage: "how many times a stream whose worker broke off mid-answer is continued on another worker (0: never; per request: header X-Rbee-Migrate: off)"},
			&cli.IntFlag{Name: "migration-max-bytes", EnvVars: []string{"RBEE_MIGRATION_MAX_BYTES"}, Value: proxy.DefaultMigrationMaxBytes, Usage: "answer text kept per stream to continue it; a longer answer is not migrated"},
			&cli.StringSliceFlag{Name: "cors-origins", EnvVars: []string{"RBEE_CORS_ORIGINS"}, Usage: "browser origins that may call the API, e.g. https://app.example.com or http://localhost:* (repeat or comma-separate; * for any; default: this machine's, http(s)://localhost|127.0.0.1|[::1] on any port)"},
			&cli.Int64Flag{Name: "transfer-rate", EnvVars: []string{"RBEE_TRANSFER_RATE"}, Usage: "MB/s a model copy from other hives may take of the network (0: no bound)"},
			&cli.IntFlag{Name: "max-conns", EnvVars: []string{"RBEE_MAX_CONNS"}, Value: node.DefaultConfig().MaxConns, Usage: "connections the HTTP port holds at once, an eighth of them per remote address (default: a quarter of the open-file limit, at most 8192); at the cap, idle ones without a key are closed first"},
			&cli.StringSliceFlag{Name: "model-vram", EnvVars: []string{"RBEE_MODEL_VRAM"}, Usage: "free VRAM one request of a model needs: NAME=MiB (repeat or comma-separate)"},
			&cli.BoolFlag{Name: "debug-pprof", EnvVars: []string{"RBEE_DEBUG_PPROF"}, Usage: "serve Go's profiler at /debug/pprof/ (to cluster members over the cluster's TLS, the CLI with --cluster-key-file, or loopback)"},
			&cli.StringFlag{Name: "cgroup-root", EnvVars: []string{"RBEE_CGROUP_ROOT"}, Usage: "cgroup v2 mount holding rbee.slice (default: found in /proc/self/mountinfo; none: report --worker servers only)"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"RBEE_LOG_LEVEL"}, Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", EnvVars: []string{"RBEE_LOG_FORMAT"}, Value: "text", Usage: "text or json"},
			&cli.StringFlag{Name: "access-log", EnvVars: []string{"RBEE_ACCESS_LOG"}, Value: "off", Usage: "one JSON line per inference request this node answers as entry node (request id, key name, model, worker, status, timings, tokens; never the prompt, the answer or the key): stdout (for journald), a FILE (reopened on SIGHUP, for logrotate), or off. Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (and OTEL_TRACES_SAMPLER*)"},
		}, append(append(keyFlags(), configFlags()...), modelFlags()...)...),
		Before: applyConfigFile,
		Action: runNode,
	}
}

// sanitizeName turns a hostname into a valid node name.
func sanitizeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if wsapi.ValidName(string(r)) == nil {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	if b.Len() == 0 {
		return "rbee"
	}
	return b.String()
}

// nodeGCPercent: a node's live heap is small (tens of MB) and nearly all it
// allocates is per request and short-lived; collecting at 5x the live heap
// instead of 2x gave 10-30% more routed requests per second on a 2-core
// machine, for a few tens of MB. GOGC, when set, still decides.
const nodeGCPercent = 400

func runNode(c *cli.Context) error {
	timing, err := gossip.ProfileTiming(c.String("gossip-profile"))
	if err != nil {
		return fmt.Errorf("--gossip-profile: %w", err)
	}
	if c.Bool("print-config") {
		keyed := c.String("cluster-key") != "" || c.String("cluster-key-file") != ""
		gossipAddr, http := listenAddrs(c, keyed)
		if err := printConfig(c.App.Writer, c, map[string]string{"gossip-addr": gossipAddr, "http-addr": http}); err != nil {
			return err
		}
		return printDetection(c.App.Writer, c.String("gossip-profile"), timing.Detection(detectionClusterSize))
	}
	log, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(nodeGCPercent)
	}
	key, err := loadKey(c)
	if err != nil {
		return err
	}
	cfg := node.DefaultConfig()
	cfg.Name = c.String("name")
	cfg.GossipProfile = c.String("gossip-profile")
	cfg.GossipAddr, cfg.HTTPAddr = listenAddrs(c, !key.IsZero())
	cfg.AdvertiseAddr = c.String("advertise-addr")
	cfg.Join = splitList(c.StringSlice("join"))
	cfg.Discover = c.String("discover")
	cfg.DataDir = c.String("data-dir")
	cfg.Roles = []string{}
	for _, r := range splitList(c.StringSlice("roles")) {
		if r != "none" {
			cfg.Roles = append(cfg.Roles, r)
		}
	}
	cfg.APIKeys = splitList(c.StringSlice("api-key"))
	cfg.APIKeysFile = c.String("api-keys-file")
	cfg.Pprof = c.Bool("debug-pprof")
	if cfg.GrantAhead = c.Int("grant-ahead"); cfg.GrantAhead == 0 {
		cfg.GrantAhead = -1 // the flag's 0 is off; the config's 0 the default
	}
	if cfg.Spares = c.Int("spare-leases"); cfg.Spares == 0 {
		cfg.Spares = -1
	}
	cfg.QueueLimit = c.Int("queue-limit")
	cfg.QueueTimeout = c.Duration("queue-timeout")
	if cfg.AffinityWait = c.Duration("affinity-wait"); cfg.AffinityWait == 0 {
		// The flag's 0 is "prefer, never wait"; the config's 0 would
		// be the default wait.
		cfg.AffinityWait = time.Nanosecond
	}
	cfg.BodyMemory = int64(c.Int("body-memory")) << 20
	cfg.BodyTimeout = c.Duration("body-timeout")
	cfg.BodyMinRate = int64(c.Int("body-min-rate")) << 10
	cfg.MaxConns = c.Int("max-conns")
	if cfg.MigrationLimit = c.Int("migration-limit"); cfg.MigrationLimit == 0 {
		cfg.MigrationLimit = -1 // the flag's 0 is off; the config's 0 the default
	}
	cfg.MigrationMaxBytes = c.Int("migration-max-bytes")
	cfg.TransferRate = c.Int64("transfer-rate") * 1_000_000
	if c.IsSet("cors-origins") {
		cfg.CORSOrigins = splitList(c.StringSlice("cors-origins"))
	}
	if cfg.ModelVRAMMB, err = parseModelVRAM(splitList(c.StringSlice("model-vram"))); err != nil {
		return err
	}
	cfg.QueenPriority = c.Int("queen-priority")
	cfg.Key = key
	cfg.Insecure = c.Bool("insecure")
	cfg.TLSCertFile, cfg.TLSKeyFile = c.String("tls-cert"), c.String("tls-key")
	cfg.Logger = log
	access, err := proxy.OpenAccessLog(c.String("access-log"), c.App.Writer)
	if err != nil {
		return fmt.Errorf("--access-log: %w", err)
	}
	defer access.Close()
	if access != nil {
		cfg.AccessLog = access.Logger
	}
	tp, err := tracing.FromEnv(context.Background(), cfg.Name)
	if err != nil {
		return err
	}
	if tp != nil {
		cfg.Tracer = tp
		defer func() {
			// Send the spans still batched, within the drain.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(ctx); err != nil {
				log.Warn("traces not all sent at shutdown", "err", err)
			}
		}()
	}
	coll, devices, closeColl, err := newCollector(c, log)
	if err != nil {
		return err
	}
	defer closeColl()
	cfg.Collector = coll
	if cfg.Models, err = modelsConfig(c, devices, log); err != nil {
		return err
	}
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	if key.IsZero() {
		msg := "no cluster key: gossip is not encrypted and the API is not authenticated; use --cluster-key-file for a real cluster"
		if cfg.APIKeysFile != "" || len(cfg.APIKeys) > 0 {
			msg = "no cluster key: gossip and the traffic between nodes are not encrypted (API keys are still checked); use --cluster-key-file for a real cluster"
		}
		log.Warn(msg)
	}
	sig, stop := signalContext(log)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer func() {
		signal.Stop(hup)
		close(hup)
	}()
	go func() {
		for range hup {
			if err := n.ReloadKeys(); err != nil {
				log.Warn("SIGHUP: the API keys file cannot be used; the previous keys stay in force", "err", err)
			}
			if err := access.Reopen(); err != nil {
				log.Warn("SIGHUP: the access log cannot be reopened; it goes on to the file open before", "err", err)
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- n.Run(context.Background()) }()
	select {
	case err := <-done:
		return err // it left on request (rbee node leave), or failed
	case <-sig.Done():
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownDrain)
	defer cancel()
	_ = n.Leave(ctx)
	return <-done
}

// detectionClusterSize is the cluster size --print-config gives failure
// detection figures for: memberlist's suspicion grows with log10 of the size,
// so they hold from 1 to 10 nodes, and double only at 100.
const detectionClusterSize = 10

// printDetection writes what a gossip profile means for finding a dead node,
// as TOML comments, so the printed configuration still reads back.
func printDetection(w io.Writer, profile string, d gossip.Detection) error {
	_, err := fmt.Fprintf(w, `# gossip-profile %q, in a cluster of up to %d nodes:
#   probe interval    %v (each node probes one other node this often)
#   probe timeout     %v (then indirect probes and TCP, within the interval)
#   suspicion window  %v when other nodes confirm it, up to %v unconfirmed
#   a silent node is declared dead after about %v (at most %v)
`, profile, detectionClusterSize, d.ProbeInterval, d.ProbeTimeout, d.SuspicionMin, d.SuspicionMax, d.Expected, d.Worst)
	if err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	return nil
}

// listenAddrs returns --gossip-addr and --http-addr, defaulted: with a
// cluster key, every interface (a cluster spans machines); without one,
// loopback unless told otherwise.
func listenAddrs(c *cli.Context, keyed bool) (gossip, http string) {
	host := "127.0.0.1"
	if keyed {
		host = ""
	}
	return orDefault(c.String("gossip-addr"), net.JoinHostPort(host, strconv.Itoa(api.DefaultGossipPort))),
		orDefault(c.String("http-addr"), net.JoinHostPort(host, strconv.Itoa(api.DefaultHTTPPort)))
}

// shutdownDrain is how long a node stopped by a signal or `rbee node leave`
// lets requests in flight finish: most answers take seconds, and a service
// manager's stop timeout (systemd: 90 s) is well above it.
const shutdownDrain = 10 * time.Second

// parseModelVRAM reads NAME=MiB pairs.
func parseModelVRAM(pairs []string) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, p := range pairs {
		name, v, ok := strings.Cut(p, "=")
		mb, err := strconv.ParseUint(v, 10, 64)
		if !ok || name == "" || err != nil {
			return nil, fmt.Errorf("--model-vram %q: want NAME=MiB", p)
		}
		out[strings.ToLower(name)] = mb
	}
	return out, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// splitList accepts both repeated flags and comma-separated values (env vars
// can only do the latter).
func splitList(in []string) []string {
	var out []string
	for _, s := range in {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
