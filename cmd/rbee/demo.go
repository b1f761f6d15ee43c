package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/internal/launcher"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run a whole cluster on this machine: 3 nodes (2 queen-eligible), 2 hives, 4 simulated workers serving 2 models, and a third model started on demand",
		Description: "Every part is a real process (rbee node run, rbee worker simulate) talking over loopback,\n" +
			"so the API, the dashboard and failover (kill the queen's pid) behave as in a real cluster.\n" +
			"The workers are simulated: their GPU figures are marked simulated wherever they show.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "http-addr", EnvVars: []string{"RBEE_HTTP_ADDR"}, Value: "127.0.0.1:7833", Usage: "where the entry node serves the API and dashboard"},
			&cli.StringSliceFlag{Name: "model", Value: cli.NewStringSlice("llama-3.2-1b", "qwen2.5-0.5b"), Usage: "the two models the simulated workers serve"},
			&cli.IntFlag{Name: "slots", Value: 2, Usage: "slots of each simulated worker"},
			&cli.Float64Flag{Name: "tokens-per-second", Value: 40, Usage: "generation speed of each simulated worker"},
			&cli.StringFlag{Name: "cold-model", Value: "phi-3-mini", Usage: "a third model no worker serves at first: the first request for it starts a simulated worker on a hive"},
			&cli.DurationFlag{Name: "cold-load", Value: 3 * time.Second, Usage: "how long the cold model's simulated worker takes to load"},
			&cli.DurationFlag{Name: "idle-unload", Value: time.Minute, Usage: "how long the cold model's worker may serve nothing before it is stopped"},
			&cli.BoolFlag{Name: "keep-logs", Usage: "keep the nodes' and workers' logs after exit (a demo that fails keeps them anyway)"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"RBEE_LOG_LEVEL"}, Value: "info", Usage: "the demo's own log level"},
		},
		Action: runDemo,
	}
}

func runDemo(c *cli.Context) (err error) {
	log, err := newLogger(c.String("log-level"), "text")
	if err != nil {
		return err
	}
	models := splitList(c.StringSlice("model"))
	if len(models) != 2 {
		return fmt.Errorf("--model: want exactly two models, got %d", len(models))
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the rbee binary: %w", err)
	}
	entryHTTP := c.String("http-addr")
	if h, _, err := net.SplitHostPort(entryHTTP); err != nil || !isLoopbackHost(h) {
		return fmt.Errorf("--http-addr %q: the demo has no cluster key, so it listens on loopback only", entryHTTP)
	}
	// Every port is checked before anything starts: a demo whose port
	// is taken says so at once, not after its children have failed.
	ports, entryHTTP, err := demoPorts(entryHTTP)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "rbee-demo-")
	if err != nil {
		return fmt.Errorf("make the log folder: %w", err)
	}
	// The logs go only with a demo that ran and stopped as asked; after
	// a failure they are what the user reads next. This runs after
	// sup.Stop (deferred later), once no child writes them.
	keepLogs := c.Bool("keep-logs")
	defer func() {
		switch {
		case err != nil:
			err = fmt.Errorf("%w\nlogs kept in %s", err, dir)
		case keepLogs:
			fmt.Printf("rbee demo: logs kept in %s\n", dir)
		default:
			os.RemoveAll(dir)
		}
	}()

	// The signal handler outlives sup.Stop (deferred later, run earlier),
	// so a second Ctrl-C while the children stop exits at once.
	ctx, stop := signalContext(log)
	defer stop()
	// The children die with the demo even if it is killed outright; a
	// process group of their own keeps a terminal's Ctrl-C (sent to the
	// foreground group) to the demo, which stops them in order.
	sup := demoGroup{Group: launcher.New(launcher.Options{LogDir: dir, Env: envWithoutRbee(), DeathSignal: syscall.SIGTERM,
		ProcessGroup: true}), bin: self}
	defer func() {
		sup.Stop()
		log.Debug("demo processes stopped", "count", sup.Len())
	}()

	sims := demoSims(models, ports)
	cold := demoCold{model: c.String("cold-model"), load: c.Duration("cold-load"), idle: c.Duration("idle-unload"),
		slots: c.Int("slots"), tokensPerSecond: c.Float64("tokens-per-second")}
	if err := wsapi.ValidModel(cold.model); err != nil || slices.Contains(models, cold.model) {
		return fmt.Errorf("--cold-model %q: want a valid name other than the two served models", cold.model)
	}
	nodes := demoNodes(sims, ports, entryHTTP, cold.hiveFlags())
	pids, queen, err := launchDemo(ctx, sup, sims, nodes, models, c.Int("slots"), c.Float64("tokens-per-second"))
	if err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C while starting
		}
		return fmt.Errorf("demo did not start: %w", err)
	}
	printDemoBanner(os.Stdout, demoBanner{models: models, cold: cold, entry: entryHTTP, pids: pids, queen: queen, logs: dir, keepLogs: keepLogs,
		rbee: userCommand(self, os.Args[0], os.Getenv("GOCACHE"))})

	// Run until Ctrl-C. A child that exits is reported, not fatal: the
	// user may have killed the queen on purpose. One that exits on its
	// own with an error keeps the logs.
	for {
		select {
		case <-ctx.Done():
			fmt.Println("rbee demo: stopping")
			return nil
		case p := <-sup.Exited():
			log.Warn("demo process exited", "name", p.Name(), "pid", p.Pid(), "status", p.Status(), "log", p.LogPath())
			if p.FailedOnItsOwn() {
				keepLogs = true
			}
		}
	}
}

// demoReadyTimeout bounds the demo's start: on this machine the cluster
// serves both models in a few seconds; the rest is room for a loaded one.
const demoReadyTimeout = 30 * time.Second

// demoPoll is how often the demo asks its children whether they are up.
const demoPoll = 100 * time.Millisecond

// demoGroup runs the demo's children: this binary again, with other
// arguments.
type demoGroup struct {
	*launcher.Group
	bin string
}

// start starts the child name and returns its pid.
func (g demoGroup) start(name string, args ...string) (int, error) {
	p, err := g.Start(name, exec.Command(g.bin, args...))
	if err != nil {
		return 0, err
	}
	return p.Pid(), nil
}

// launchDemo starts the simulated workers, then the nodes, and returns once
// the cluster is ready (see demoReady): the nodes' pids and the queen. A
// child that exits meanwhile fails it at once, naming the child.
func launchDemo(ctx context.Context, sup demoGroup, sims []demoSim, nodes []demoNode, models []string, slots int, tokensPerSecond float64) (map[string]int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, demoReadyTimeout)
	defer cancel()
	if err := startSims(ctx, sup, sims, slots, tokensPerSecond); err != nil {
		return nil, "", err
	}
	pids := map[string]int{}
	for _, nd := range nodes {
		pid, err := sup.start(nd.name, append([]string{"node", "run", "--name", nd.name, "--log-level", "info"}, nd.args...)...)
		if err != nil {
			return nil, "", err
		}
		pids[nd.name] = pid
	}
	var queen string
	err := sup.Await(ctx, demoPoll, func(ctx context.Context) (err error) {
		queen, err = demoReady(ctx, nodes, models)
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("wait for the cluster: %w", err)
	}
	return pids, queen, nil
}

// demoPorts checks that the entry node's address entryHTTP is free and
// picks the demo's other ports (see freePorts), so that nothing starts
// on a port that is taken. It returns the ports and the entry's address:
// entryHTTP, or one of the ports if entryHTTP asks for port 0 (the kernel
// would pick one only the entry's log tells).
func demoPorts(entryHTTP string) ([]int, string, error) {
	if _, port, _ := net.SplitHostPort(entryHTTP); port != "0" {
		ln, err := net.Listen("tcp", entryHTTP)
		if err != nil {
			return nil, "", bindError(entryHTTP, err)
		}
		// Held while the other ports are picked, so that none is this one.
		defer ln.Close()
	}
	ports, err := freePorts(demoPortCount)
	if err != nil {
		return nil, "", err
	}
	if _, port, _ := net.SplitHostPort(entryHTTP); port == "0" {
		entryHTTP = "127.0.0.1:" + strconv.Itoa(ports[portEntryHTTP])
	}
	return ports, entryHTTP, nil
}

// bindError says that the entry node cannot listen on addr, with the
// system's reason alone (not Go's "listen tcp ...: bind:") and, when the
// port is taken, what to do.
func bindError(addr string, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("--http-addr %s: %w", addr, err)
	}
	if errno == syscall.EADDRINUSE {
		return fmt.Errorf("--http-addr %s: %w (another rbee demo? stop it, or pass --http-addr 127.0.0.1:0)", addr, errno)
	}
	return fmt.Errorf("--http-addr %s: %w", addr, errno)
}

// userCommand is this binary as the user ran it, for the commands the demo
// prints: `go run ./cmd/rbee` when exe is a binary `go run` built (in a
// go-build* folder: its temporary one, or the build cache, by default
// .../go-build, else goCache), otherwise arg0 as the user typed it.
func userCommand(exe, arg0, goCache string) string {
	if goCache != "" && strings.HasPrefix(exe, filepath.Clean(goCache)+string(filepath.Separator)) {
		return "go run ./cmd/rbee"
	}
	for _, part := range strings.Split(filepath.ToSlash(exe), "/") {
		if strings.HasPrefix(part, "go-build") {
			return "go run ./cmd/rbee"
		}
	}
	return shellQuote(arg0)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:@=,", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// The demo's ports, indexes into freePorts' answer.
const (
	portSims        = 0 // ports[0:4]: the four simulated workers
	portGossipA     = 4 // hive-a's gossip port, which the others join
	portHiveAHTTP   = 5
	portHiveBHTTP   = 6
	portHiveBGossip = 7
	portEntryGossip = 8
	portEntryHTTP   = 9 // only when --http-addr asks for port 0
	demoPortCount   = 10
)

// demoSim is one simulated worker of the demo.
type demoSim struct{ name, model, port string }

// demoSims lists four simulated workers: each hive serves both models.
func demoSims(models []string, ports []int) []demoSim {
	port := func(i int) string { return strconv.Itoa(ports[portSims+i]) }
	return []demoSim{
		{"sim-1", models[0], port(0)}, {"sim-2", models[1], port(1)},
		{"sim-3", models[0], port(2)}, {"sim-4", models[1], port(3)},
	}
}

// workerFlag is the --worker value that points a hive at s.
func (s demoSim) workerFlag() string {
	return "http://127.0.0.1:" + s.port + ",model=" + s.model + ",group=sim,instance=" + s.port
}

// startSims starts the simulated workers and waits until each answers: the
// hives ask their workers what they serve as soon as they start, so they
// start after this returns.
func startSims(ctx context.Context, sup demoGroup, sims []demoSim, slots int, tokensPerSecond float64) error {
	for _, s := range sims {
		if _, err := sup.start(s.name, "worker", "simulate", "--model", s.model, "--port", s.port,
			"--vram-mb", strconv.Itoa(demoGPUVRAMMB), "--slots", strconv.Itoa(slots), "--tokens-per-second", strconv.FormatFloat(tokensPerSecond, 'f', -1, 64)); err != nil {
			return err
		}
	}
	err := sup.Await(ctx, demoPoll, func(ctx context.Context) error {
		for _, s := range sims {
			if err := getOK(ctx, "http://127.0.0.1:"+s.port+"/health", nil); err != nil {
				return fmt.Errorf("simulated worker %s: %w", s.name, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for the simulated workers: %w", err)
	}
	return nil
}

// demoNode is one `rbee node run` of the demo: its name, its API address,
// and the flags after --name and --log-level.
type demoNode struct {
	name string
	http string
	args []string
}

// demoNodes lists the demo's nodes: two queen-eligible hives with two
// simulated workers each (the others join hive-a's gossip port) and the entry
// node, which has no role and serves entryHTTP.
func demoNodes(sims []demoSim, ports []int, entryHTTP string, hiveExtra []string) []demoNode {
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	gossipA := addr(portGossipA)
	mk := func(name, http string, args ...string) demoNode {
		return demoNode{name: name, http: http, args: append([]string{"--http-addr", http}, args...)}
	}
	return []demoNode{
		mk("hive-a", addr(portHiveAHTTP), append([]string{"--roles", "queen,hive", "--queen-priority", "1", "--cgroup-root", "none",
			"--gossip-addr", gossipA, "--worker", sims[0].workerFlag(), "--worker", sims[1].workerFlag()}, hiveExtra...)...),
		mk("hive-b", addr(portHiveBHTTP), append([]string{"--roles", "queen,hive", "--cgroup-root", "none",
			"--gossip-addr", addr(portHiveBGossip), "--join", gossipA, "--worker", sims[2].workerFlag(), "--worker", sims[3].workerFlag()}, hiveExtra...)...),
		mk("entry", entryHTTP, "--roles", "none", "--gossip-addr", addr(portEntryGossip), "--join", gossipA),
	}
}

// demoCold is the demo's third model: in both hives' catalogs, started on
// the sim engine by the first request for it, stopped when idle.
type demoCold struct {
	model           string
	load, idle      time.Duration
	slots           int
	tokensPerSecond float64
}

// demoColdVRAMMB is the cold model's simulated footprint.
const demoColdVRAMMB = 2500

// Each hive of the demo has one simulated GPU, which its two simulated
// workers and the cold model's share: the workers simulate a GPU of the
// same size, and the hive's GPU row adds up what they report (see
// models.Manager's simGPUs), so the two never disagree. It holds both
// workers' weights and KV caches and the cold model's.
const (
	demoGPU       = "1x24GiB"
	demoGPUVRAMMB = 24 << 10
)

func (d demoCold) hiveFlags() []string {
	return []string{"--sim-gpus", demoGPU, "--idle-unload", d.idle.String(),
		"--model", fmt.Sprintf("%s=,engine=sim,load_ms=%d,vram=%d,slots=%d,args=--tokens-per-second %g",
			d.model, d.load.Milliseconds(), demoColdVRAMMB, d.slots, d.tokensPerSecond)}
}

// demoBanner is what the banner says.
type demoBanner struct {
	models   []string
	cold     demoCold
	entry    string         // the entry node's API address
	pids     map[string]int // by node name
	queen    string
	logs     string // the log folder
	keepLogs bool
	rbee     string // the command that runs rbee, as the user ran it (userCommand)
}

// printDemoBanner prints what the demo runs and how to use it, once the
// cluster is ready.
func printDemoBanner(w io.Writer, b demoBanner) {
	kill := "kill -9 <pid>"
	if pid, ok := b.pids[b.queen]; ok {
		kill = "kill -9 " + strconv.Itoa(pid)
	}
	logs := "removed when the demo stops, unless it fails; --keep-logs keeps them"
	if b.keepLogs {
		logs = "kept"
	}
	fmt.Fprintf(w, `rbee demo: 3 nodes (2 queen-eligible), 2 hives, 4 simulated workers serving %s and %s.
Simulated workers' GPU and VRAM figures are made up and marked "simulated" wherever they show.

  API         http://%[3]s/v1   (any OpenAI client; no API key needed on loopback)
  Dashboard   http://%[3]s/
  Metrics     http://%[3]s/metrics

Try:
  curl http://%[3]s/v1/chat/completions -d '{"model":"%[1]s","messages":[{"role":"user","content":"hi"}],"stream":true}'
  curl http://%[3]s/v1/chat/completions -d '{"model":"%[1]s","messages":[{"role":"user","content":"Weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]}'
  %[4]s status --http-addr %[3]s
  %[4]s top --http-addr %[3]s

%[12]s is not loaded: the first request for it starts a simulated worker on a hive (about %[13]s),
and the worker is stopped after %[14]s without requests. Watch it load in the dashboard or rbee top:
  curl http://%[3]s/v1/chat/completions -d '{"model":"%[12]s","messages":[{"role":"user","content":"hi"}]}'

Nodes: hive-a (pid %[5]d), hive-b (pid %[6]d), entry (pid %[7]d, serves %[3]s); the queen is %[8]s.
Kill the queen and watch the other take over while requests keep flowing:
  %[9]s
Logs: %[10]s (%[11]s)
Ctrl-C stops the demo.
`, b.models[0], b.models[1], b.entry, b.rbee, b.pids["hive-a"], b.pids["hive-b"], b.pids["entry"], b.queen, kill, b.logs, logs,
		b.cold.model, b.cold.load, b.cold.idle)
}

// envWithoutRbee is this process's environment without RBEE_* variables: the
// user's settings (a cluster key, a worker list, RBEE_JOIN) must not reach
// the demo's children, which are configured by flags alone, nor the
// processes the end-to-end tests start.
func envWithoutRbee() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RBEE_") {
			env = append(env, kv)
		}
	}
	return env
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// freePorts returns n distinct ports that were free on 127.0.0.1 for both TCP
// and UDP (memberlist binds both on the gossip port).
func freePorts(n int) ([]int, error) {
	var closers []func() error
	defer func() {
		for _, cl := range closers {
			_ = cl()
		}
	}()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100 {
			return nil, errors.New("no free port with both TCP and UDP free")
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find free port: %w", err)
		}
		closers = append(closers, ln.Close)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // keep the TCP listener so this port is not offered again
		}
		closers = append(closers, pc.Close)
		ports = append(ports, port)
	}
	return ports, nil
}

// demoReady is nil once the cluster is whole: every node answers /healthz
// under its own name and follows the same queen, and the entry node serves
// every model. It returns the queen.
func demoReady(ctx context.Context, nodes []demoNode, models []string) (string, error) {
	queen, queenOf := "", ""
	for _, nd := range nodes {
		var h struct {
			Node  string `json:"node"`
			Queen string `json:"queen"`
		}
		if err := getOK(ctx, "http://"+nd.http+api.PathHealth, &h); err != nil {
			return "", fmt.Errorf("%s: %w", nd.name, err)
		}
		switch {
		case h.Node != nd.name:
			return "", fmt.Errorf("%s: %s answers as node %q", nd.name, nd.http, h.Node)
		case h.Queen == "":
			return "", fmt.Errorf("%s: no queen yet", nd.name)
		case queen != "" && h.Queen != queen:
			return "", fmt.Errorf("%s follows queen %s, %s follows %s", queenOf, queen, nd.name, h.Queen)
		}
		queen, queenOf = h.Queen, nd.name
	}
	entry := nodes[len(nodes)-1]
	var v struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := getOK(ctx, "http://"+entry.http+"/v1/models", &v); err != nil {
		return "", fmt.Errorf("%s: %w", entry.name, err)
	}
	served := map[string]bool{}
	for _, d := range v.Data {
		served[d.ID] = true
	}
	for _, m := range models {
		if !served[m] {
			return "", fmt.Errorf("%s: model %s not served yet", entry.name, m)
		}
	}
	return queen, nil
}

// demoClient asks the demo's children whether they are up; a child that
// does not answer within a second is asked again at the next poll.
var demoClient = &http.Client{Timeout: time.Second}

// getOK gets url and wants a 200; into, when not nil, takes the JSON body.
func getOK(ctx context.Context, url string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := demoClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s", url, resp.Status)
	}
	if into == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(into); err != nil {
		return fmt.Errorf("decode %s: %w", url, err)
	}
	return nil
}
