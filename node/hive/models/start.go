package models

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/rbee/node/hive/launch"
	"github.com/rbee/rbee/wsapi"
)

// Start carries out a queen's model_start: stop the workers it evicts, then
// start the model's engine. It returns at once; the hive's reports say how
// it goes.
func (m *Manager) Start(ms *wsapi.ModelStart, queen string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || slices.Contains(m.seen, ms.StartID) {
		return
	}
	m.seen = append(m.seen, ms.StartID)
	if len(m.seen) > 256 {
		m.seen = m.seen[len(m.seen)-256:]
	}
	var it *item
	for _, c := range m.items {
		if c.Name == ms.Model {
			it = c
		}
	}
	if it == nil {
		m.log.Warn("queen asked to start a model this hive does not have", "model", ms.Model, "queen", queen)
		return
	}
	if it.unavailable != "" {
		m.log.Warn("queen asked to start a model that cannot start here", "model", ms.Model, "reason", it.unavailable)
		return
	}
	var evict []*worker
	for _, inst := range ms.Evict {
		if w := m.workers[inst]; w != nil {
			m.stopLocked(w, "evicted to make room for "+it.Name)
			evict = append(evict, w)
		}
	}
	vram := ms.VRAMMB
	if vram == 0 {
		vram, _ = it.vram()
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.run(it, ms, queen, vram, evict)
	}()
}

// run starts one engine and supervises it until it exits or is stopped.
func (m *Manager) run(it *item, ms *wsapi.ModelStart, queen string, vram uint64, evict []*worker) {
	for _, w := range evict {
		select {
		case <-w.exited:
		case <-m.ctx.Done():
			return
		}
	}
	start := time.Now()
	port, err := m.freePort()
	if err != nil {
		m.fail(it, start, "failed", fmt.Sprintf("no free port: %v", err))
		return
	}
	w := &worker{instance: strconv.Itoa(port), it: it, state: wsapi.ManagedLoading, since: start, gpus: ms.GPUs,
		vramMB: vram, startID: ms.StartID, startedBy: queen, stopCh: make(chan struct{}), exited: make(chan struct{})}
	defer close(w.exited)
	argv, err := m.argv(it, w)
	if err != nil {
		m.fail(it, start, "failed", err.Error())
		return
	}
	out := &tail{}
	var sink io.Writer = out
	logPath := filepath.Join(m.cfg.LogDir, fmt.Sprintf("%s-%d.log", safeFile(it.Name), port))
	if err := os.MkdirAll(m.cfg.LogDir, 0o755); err == nil {
		pruneLogs(m.cfg.LogDir, safeFile(it.Name), keepLogs-1)
		if f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644); err == nil {
			defer f.Close()
			sink = io.MultiWriter(&capped{w: f, left: maxLogBytes}, out)
		}
	}
	var env []string
	if len(w.gpus) > 0 {
		ids := make([]string, len(w.gpus))
		for i, g := range w.gpus {
			ids[i] = strconv.Itoa(g)
		}
		env = append(env, "CUDA_VISIBLE_DEVICES="+strings.Join(ids, ","))
	}
	proc, err := launch.Start(launch.StartConfig{CgroupRoot: m.cfg.CgroupRoot, Group: wsapi.ManagedGroup, Instance: w.instance,
		Argv: argv, Env: env, Output: sink, Logger: m.log})
	if err != nil {
		m.fail(it, start, "failed", err.Error())
		return
	}
	w.pid = proc.Pid
	m.mu.Lock()
	m.workers[w.instance] = w
	m.mu.Unlock()
	m.log.Info("starting worker", "model", it.Name, "engine", it.Engine, "instance", w.instance, "pid", proc.Pid,
		"gpus", w.gpus, "in_cgroup", proc.InCgroup, "log", logPath, "queen", queen)
	m.notify()
	defer func() {
		m.mu.Lock()
		if m.workers[w.instance] == w {
			delete(m.workers, w.instance)
		}
		m.mu.Unlock()
		m.notify()
	}()

	result, why := m.await(it, w, proc, out, start)
	loadTime := time.Since(start)
	if result != "ready" {
		proc.Stop(m.cfg.StopGrace)
		if result == "stopped" {
			m.loads.WithLabelValues(it.Name, result).Inc()
			m.log.Info("worker stopped while loading", "model", it.Name, "instance", w.instance, "why", why)
			return
		}
		m.fail(it, start, result, why)
		return
	}
	m.loads.WithLabelValues(it.Name, "ready").Inc()
	m.loadTime.WithLabelValues(it.Name).Observe(loadTime.Seconds())
	m.mu.Lock()
	w.state, w.readyAt, w.lastUsed = wsapi.ManagedReady, time.Now(), time.Now()
	it.loadMS, it.failures, it.failReason = loadTime.Milliseconds(), 0, ""
	m.dirty = true
	m.mu.Unlock()
	if m.cfg.Register != nil {
		if err := m.cfg.Register(w.instance, proc.Pid, it.Name, it.Slots); err != nil {
			m.log.Warn("register started worker", "instance", w.instance, "err", err)
		}
	}
	m.log.Info("worker ready", "model", it.Name, "instance", w.instance, "load_time", loadTime.Round(time.Millisecond))
	m.notify()

	select {
	case <-proc.Done():
		m.fail(it, start, "exited", fmt.Sprintf("%s after %s ready%s", exitText(proc.Err()),
			time.Since(w.readyAt).Round(time.Second), out.text()))
	case <-m.ctx.Done():
		proc.Stop(m.cfg.StopGrace)
	case <-w.stopCh:
		m.drain(w, proc)
		m.log.Info("worker stopped", "model", it.Name, "instance", w.instance, "why", m.whyStopped(w))
	}
}

// fail records a start that did not get (or stay) ready: the queen backs off
// from this model on this hive by the failures in a row.
func (m *Manager) fail(it *item, start time.Time, result, why string) {
	m.loads.WithLabelValues(it.Name, result).Inc()
	m.mu.Lock()
	it.failures++
	it.failedAt = time.Now()
	it.failReason = clean(why, 900)
	n := it.failures
	m.mu.Unlock()
	m.log.Warn("worker failed to start", "model", it.Name, "result", result, "after", time.Since(start).Round(time.Millisecond),
		"failures_in_a_row", n, "reason", why)
	m.notify()
}

// argv builds the engine's command line for w.
func (m *Manager) argv(it *item, w *worker) ([]string, error) {
	vars := map[string]string{"path": it.Path, "port": w.instance, "slots": strconv.Itoa(it.Slots),
		"ctx": strconv.Itoa(it.Ctx), "name": it.Name, "host": "127.0.0.1"}
	argv, err := it.engine.Argv(vars)
	if err != nil {
		return nil, fmt.Errorf("engine %s: %w", it.Engine, err)
	}
	if it.engine.Sim {
		total := uint64(0)
		for _, g := range m.cfg.SimGPUs {
			if slices.Contains(w.gpus, g.Index) {
				total += g.TotalVRAMMB
			}
		}
		argv = append(argv, "--load-ms", strconv.Itoa(it.LoadMS), "--model-vram-mb", strconv.FormatUint(w.vramMB, 10))
		if total > 0 {
			argv = append(argv, "--vram-mb", strconv.FormatUint(total, 10))
		}
	}
	return append(argv, it.Args...), nil
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before the engine binds it; the start then fails and is retried
// like any other failure.
func (m *Manager) freePort() (int, error) {
	for range 10 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		m.mu.Lock()
		_, taken := m.workers[strconv.Itoa(port)]
		m.mu.Unlock()
		if !taken { // another start may have just been given it
			return port, nil
		}
	}
	return 0, errors.New("no free port that no starting engine holds")
}

func exitText(err error) string {
	var ee launch.ExitError
	if errors.As(err, &ee) {
		return fmt.Sprintf("exited with status %d", ee.Code)
	}
	if err == nil {
		return "exited with status 0"
	}
	return err.Error()
}
