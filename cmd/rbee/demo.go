package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// demoProc is one child process of the demo.
type demoProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
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
	ports, err := freePorts(10)
	if err != nil {
		return err
	}
	// The entry node's port is the user's; if it was 0 the kernel picks
	// and the entry's log says which, so use a free one now instead.
	if strings.HasSuffix(entryHTTP, ":0") {
		entryHTTP = "127.0.0.1:" + strconv.Itoa(ports[9])
	}

	ctx, stop := signalContext(log)
	defer stop()
	var (
		mu    sync.Mutex
		procs []*demoProc
	)
	start := func(name string, args ...string) (*demoProc, error) {
		f, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(self, args...)
		cmd.Stdout, cmd.Stderr = f, f
		cmd.Env = demoEnv()
		// The children die with the demo even if it is killed
		// outright; Setpgid keeps a terminal's Ctrl-C (sent to the
		// foreground group) to the demo, which stops them in order.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		if err := cmd.Start(); err != nil {
			f.Close()
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		p := &demoProc{name: name, cmd: cmd, done: make(chan struct{})}
		go func() {
			p.err = cmd.Wait()
			f.Close()
			close(p.done)
		}()
		mu.Lock()
		procs = append(procs, p)
		mu.Unlock()
		return p, nil
	}
	defer func() {
		mu.Lock()
		ps := procs
		mu.Unlock()
		stopAll(ps, log)
	}()

	// Four simulated workers: each hive serves both models.
	type sim struct{ name, model, port string }
	sims := []sim{
		{"sim-1", models[0], strconv.Itoa(ports[0])}, {"sim-2", models[1], strconv.Itoa(ports[1])},
		{"sim-3", models[0], strconv.Itoa(ports[2])}, {"sim-4", models[1], strconv.Itoa(ports[3])},
	}
	for _, s := range sims {
		if _, err := start(s.name, "worker", "simulate", "--model", s.model, "--port", s.port,
			"--slots", strconv.Itoa(c.Int("slots")), "--tokens-per-second", strconv.FormatFloat(c.Float64("tokens-per-second"), 'f', -1, 64)); err != nil {
			return err
		}
	}
	// The hives ask their workers what they serve as soon as they start:
	// start them once the workers answer.
	for _, s := range sims {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := waitOK(wctx, "http://127.0.0.1:"+s.port+"/health")
		cancel()
		if err != nil {
			return fmt.Errorf("simulated worker %s did not start: %w (log in %s)", s.name, err, dir)
		}
	}
	worker := func(s sim) string {
		return "http://127.0.0.1:" + s.port + ",model=" + s.model + ",group=sim,instance=" + s.port
	}
	gossipA := "127.0.0.1:" + strconv.Itoa(ports[4])
	nodes := []struct {
		name string
		args []string
	}{
		{"hive-a", []string{"--roles", "queen,hive", "--queen-priority", "1", "--cgroup-root", "none", "--http-addr", "127.0.0.1:" + strconv.Itoa(ports[5]),
			"--gossip-addr", gossipA, "--worker", worker(sims[0]), "--worker", worker(sims[1])}},
		{"hive-b", []string{"--roles", "queen,hive", "--cgroup-root", "none", "--http-addr", "127.0.0.1:" + strconv.Itoa(ports[6]),
			"--gossip-addr", "127.0.0.1:" + strconv.Itoa(ports[7]), "--join", gossipA, "--worker", worker(sims[2]), "--worker", worker(sims[3])}},
		{"entry", []string{"--roles", "none", "--http-addr", entryHTTP,
			"--gossip-addr", "127.0.0.1:" + strconv.Itoa(ports[8]), "--join", gossipA}},
	}
	pids := map[string]int{}
	for _, nd := range nodes {
		p, err := start(nd.name, append([]string{"node", "run", "--name", nd.name, "--log-level", "info"}, nd.args...)...)
		if err != nil {
			return err
		}
		pids[nd.name] = p.cmd.Process.Pid
	}

	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitModels(readyCtx, entryHTTP, models); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cluster not ready: %w (logs in %s; pass --keep-logs to keep them)", err, dir)
	}
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

	// Run until Ctrl-C. A child that exits is reported, not fatal: the
	// user may have killed the queen on purpose.
	mu.Lock()
	watch := append([]*demoProc(nil), procs...)
	mu.Unlock()
	exited := make(chan *demoProc, len(watch))
	for _, p := range watch {
		go func() {
			select {
			case <-p.done:
				exited <- p
			case <-ctx.Done():
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			fmt.Println("rbee demo: stopping")
			return nil
		case p := <-exited:
			log.Warn("demo process exited", "name", p.name, "pid", p.cmd.Process.Pid, "status", exitText(p.err), "log", filepath.Join(dir, p.name+".log"))
		}
	}
}

// demoEnv keeps the user's RBEE_* settings (a cluster key, a worker list)
// away from the demo's children, which are configured by flags alone.
func demoEnv() []string {
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

// stopAll stops the children: SIGTERM (nodes leave the cluster gracefully),
// then SIGKILL for any still running after 5 s.
func stopAll(ps []*demoProc, log *slog.Logger) {
	for _, p := range ps {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for _, p := range ps {
		select {
		case <-p.done:
		case <-deadline.C:
			for _, q := range ps {
				_ = q.cmd.Process.Kill()
			}
			<-p.done
		}
	}
	for _, p := range ps {
		<-p.done
	}
	log.Debug("demo processes stopped", "count", len(ps))
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
