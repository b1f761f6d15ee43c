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
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run a whole cluster on this machine: 3 nodes (2 queen-eligible), 2 hives, 4 simulated workers serving 2 models",
		Description: "Every part is a real process (rbee node run, rbee worker simulate) talking over loopback,\n" +
			"so the API, the dashboard and failover (kill the queen's pid) behave as in a real cluster.\n" +
			"The workers are simulated: their GPU figures are marked simulated wherever they show.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "http-addr", EnvVars: []string{"RBEE_HTTP_ADDR"}, Value: "127.0.0.1:7833", Usage: "where the entry node serves the API and dashboard"},
			&cli.StringSliceFlag{Name: "model", Value: cli.NewStringSlice("llama-3.2-1b", "qwen2.5-0.5b"), Usage: "the two models the simulated workers serve"},
			&cli.IntFlag{Name: "slots", Value: 2, Usage: "slots of each simulated worker"},
			&cli.Float64Flag{Name: "tokens-per-second", Value: 40, Usage: "generation speed of each simulated worker"},
			&cli.BoolFlag{Name: "keep-logs", Usage: "keep the nodes' and workers' logs after exit"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"RBEE_LOG_LEVEL"}, Value: "info", Usage: "the demo's own log level"},
		},
		Action: runDemo,
	}
}

func runDemo(c *cli.Context) error {
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
	dir, err := os.MkdirTemp("", "rbee-demo-")
	if err != nil {
		return err
	}
	if !c.Bool("keep-logs") {
		defer os.RemoveAll(dir)
	}
	entryHTTP := c.String("http-addr")
	if h, _, err := net.SplitHostPort(entryHTTP); err != nil || !isLoopbackHost(h) {
		return fmt.Errorf("--http-addr %q: the demo has no cluster key, so it listens on loopback only", entryHTTP)
	}
	ports, err := freePorts(demoPortCount)
	if err != nil {
		return err
	}
	// The entry node's port is the user's; if it was 0 the kernel picks
	// and the entry's log says which, so use a free one now instead.
	if strings.HasSuffix(entryHTTP, ":0") {
		entryHTTP = "127.0.0.1:" + strconv.Itoa(ports[portEntryHTTP])
	}

	// The signal handler outlives sup.stop (deferred later, run earlier),
	// so a second Ctrl-C while the children stop exits at once.
	ctx, stop := signalContext(log)
	defer stop()
	sup := newSupervisor(self, dir, log)
	defer sup.stop()

	sims := demoSims(models, ports)
	if err := startSims(ctx, sup, sims, c.Int("slots"), c.Float64("tokens-per-second")); err != nil {
		return err
	}
	pids := map[string]int{}
	for _, nd := range demoNodes(sims, ports, entryHTTP) {
		pid, err := sup.start(nd.name, append([]string{"node", "run", "--name", nd.name, "--log-level", "info"}, nd.args...)...)
		if err != nil {
			return err
		}
		pids[nd.name] = pid
	}
	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitModels(readyCtx, entryHTTP, models); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cluster not ready: %w (logs in %s; pass --keep-logs to keep them)", err, dir)
	}
	printDemoBanner(models, entryHTTP, pids, dir)

	// Run until Ctrl-C. A child that exits is reported, not fatal: the
	// user may have killed the queen on purpose.
	for {
		select {
		case <-ctx.Done():
			fmt.Println("rbee demo: stopping")
			return nil
		case p := <-sup.exited():
			log.Warn("demo process exited", "name", p.name, "pid", p.proc.Pid, "status", exitText(p.err), "log", p.logPath)
		}
	}
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
func startSims(ctx context.Context, sup *supervisor, sims []demoSim, slots int, tokensPerSecond float64) error {
	for _, s := range sims {
		if _, err := sup.start(s.name, "worker", "simulate", "--model", s.model, "--port", s.port,
			"--slots", strconv.Itoa(slots), "--tokens-per-second", strconv.FormatFloat(tokensPerSecond, 'f', -1, 64)); err != nil {
			return err
		}
	}
	for _, s := range sims {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := waitOK(wctx, "http://127.0.0.1:"+s.port+"/health")
		cancel()
		if err != nil {
			return fmt.Errorf("simulated worker %s did not start: %w (log in %s)", s.name, err, sup.logDir)
		}
	}
	return nil
}

// demoNode is one `rbee node run` of the demo: its name and the flags after
// --name and --log-level.
type demoNode struct {
	name string
	args []string
}

// demoNodes lists the demo's nodes: two queen-eligible hives with two
// simulated workers each (the others join hive-a's gossip port) and the entry
// node, which has no role and serves entryHTTP.
func demoNodes(sims []demoSim, ports []int, entryHTTP string) []demoNode {
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	gossipA := addr(portGossipA)
	return []demoNode{
		{"hive-a", []string{"--roles", "queen,hive", "--queen-priority", "1", "--cgroup-root", "none", "--http-addr", addr(portHiveAHTTP),
			"--gossip-addr", gossipA, "--worker", sims[0].workerFlag(), "--worker", sims[1].workerFlag()}},
		{"hive-b", []string{"--roles", "queen,hive", "--cgroup-root", "none", "--http-addr", addr(portHiveBHTTP),
			"--gossip-addr", addr(portHiveBGossip), "--join", gossipA, "--worker", sims[2].workerFlag(), "--worker", sims[3].workerFlag()}},
		{"entry", []string{"--roles", "none", "--http-addr", entryHTTP,
			"--gossip-addr", addr(portEntryGossip), "--join", gossipA}},
	}
}

// printDemoBanner prints what the demo runs and how to use it, once the
// cluster serves every model.
func printDemoBanner(models []string, entryHTTP string, pids map[string]int, dir string) {
	queen := demoQueen(entryHTTP)
	fmt.Printf(`rbee demo: 3 nodes (2 queen-eligible), 2 hives, 4 simulated workers serving %s and %s.
Simulated workers' GPU and VRAM figures are made up and marked "simulated" wherever they show.

  API         http://%[3]s/v1   (any OpenAI client; no API key needed on loopback)
  Dashboard   http://%[3]s/
  Metrics     http://%[3]s/metrics

Try:
  curl http://%[3]s/v1/chat/completions -d '{"model":"%[1]s","messages":[{"role":"user","content":"hi"}],"stream":true}'
  go run ./cmd/rbee status --http-addr %[3]s

Nodes: hive-a (pid %[4]d), hive-b (pid %[5]d), entry (pid %[6]d, serves %[3]s); the queen is %[7]s.
Kill the queen (kill -9 <pid>) and watch the other take over while requests keep flowing.
Logs: %[8]s
Ctrl-C stops the demo.
`, models[0], models[1], entryHTTP, pids["hive-a"], pids["hive-b"], pids["entry"], queen, dir)
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

func exitText(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
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

// waitModels polls the entry node until /v1/models lists every model.
func waitModels(ctx context.Context, addr string, want []string) error {
	var last error
	for {
		last = func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/models", nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var v struct {
				Data []struct {
					ID string `json:"id"`
				} `json:"data"`
			}
			if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v); err != nil {
				return err
			}
			have := map[string]bool{}
			for _, m := range v.Data {
				have[m.ID] = true
			}
			for _, m := range want {
				if !have[m] {
					return fmt.Errorf("model %s not served yet", m)
				}
			}
			return nil
		}()
		if last == nil {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), last)
		case <-t.C:
		}
	}
}

// waitOK polls url until it answers 200.
func waitOK(ctx context.Context, url string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func demoQueen(addr string) string {
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		return "unknown"
	}
	defer resp.Body.Close()
	var v struct {
		Queen string `json:"queen"`
	}
	if json.NewDecoder(resp.Body).Decode(&v) != nil || v.Queen == "" {
		return "unknown"
	}
	return v.Queen
}
