package models

import (
	"cmp"
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

	"github.com/rbee/rbee/internal/backoff"
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
	if it == nil || it.copyFrom != nil {
		if it = m.toCopyLocked(it, ms); it == nil {
			m.log.Warn("queen asked to start a model this hive does not have", "model", ms.Model, "queen", queen)
			return
		}
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

// run starts one engine and supervises it until it is stopped, fails to
// get ready, or exits on its own and restartDelay says not to start it
// again in place.
func (m *Manager) run(it *item, ms *wsapi.ModelStart, queen string, vram uint64, evict []*worker) {
	for _, w := range evict {
		select {
		case <-w.exited:
		case <-m.ctx.Done():
			return
		}
	}
	start := time.Now()
	if it.copyFrom != nil {
		if !m.copyIn(it, ms, queen, start) {
			return
		}
		// The load time learned is the engine's, not the copy's.
		start = time.Now()
	}
	port, err := m.freePort()
	if err != nil {
		m.fail(it, nil, start, "failed", fmt.Sprintf("no free port: %v", err))
		return
	}
	w := &worker{instance: strconv.Itoa(port), it: it, state: wsapi.ManagedLoading, since: start, gpus: ms.GPUs,
		vramMB: vram, startID: ms.StartID, startedBy: queen, stopCh: make(chan struct{}), exited: make(chan struct{})}
	defer close(w.exited)
	argv, err := m.argv(it, w)
	if err != nil {
		m.fail(it, w, start, "failed", err.Error())
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
	if it.Engine == EngineOllama {
		store, err := m.ollama.path(m.cfg.OllamaModels)
		if err != nil {
			m.fail(it, w, start, "failed", err.Error())
			return
		}
		env = append(env, ollamaEnv(it, w.instance, store, m.cfg.LoadTimeout)...)
	}
	defer func() {
		m.mu.Lock()
		if m.workers[w.instance] == w {
			delete(m.workers, w.instance)
		}
		m.mu.Unlock()
		m.notify()
	}()
	var restarts []time.Time // in place, after crashes; the newest last
	for {
		proc, err := launch.Start(launch.StartConfig{CgroupRoot: m.cfg.CgroupRoot, Group: wsapi.ManagedGroup, Instance: w.instance,
			Argv: argv, Env: env, Output: sink, RecordDir: m.cfg.RunDir, Logger: m.log})
		if err != nil {
			m.fail(it, w, start, "failed", err.Error())
			return
		}
		m.mu.Lock()
		w.pid = proc.Pid
		m.workers[w.instance] = w
		m.mu.Unlock()
		m.log.Info("starting worker", "model", it.Name, "engine", it.Engine, "instance", w.instance, "pid", proc.Pid,
			"gpus", w.gpus, "in_cgroup", proc.InCgroup, "log", logPath, "queen", queen)
		m.notify()

		readyFor, why := m.supervise(it, w, proc, out, start)
		if why == "" {
			return // stopped, or failed to get ready
		}
		now := time.Now()
		restarts = slices.DeleteFunc(restarts, func(t time.Time) bool { return now.Sub(t) >= crashWindow })
		delay, again := restartDelay(readyFor, m.cfg.StableAfter, len(restarts))
		m.mu.Lock()
		stopping, stopWhy := w.stopWhy != "" || m.closed, cmp.Or(w.stopWhy, "hive stopping")
		if again && !stopping {
			// Loading again: the queen holds its requests for this
			// restart instead of refusing them, and places no other
			// engine on the GPU room it keeps.
			w.state, w.since, w.readyAt = wsapi.ManagedLoading, now, time.Time{}
		}
		m.mu.Unlock()
		switch {
		case stopping:
			m.log.Info("worker stopped", "model", it.Name, "instance", w.instance, "why", stopWhy)
			return
		case !again:
			m.fail(it, w, start, "exited", why)
			return
		}
		m.loads.WithLabelValues(it.Name, "crashed").Inc()
		m.log.Warn("worker exited after serving; restarting it", "model", it.Name, "instance", w.instance,
			"ready_for", readyFor.Round(time.Second), "in", delay, "restarts_in_window", len(restarts), "reason", why)
		m.notify()
		restarts = append(restarts, now)
		if !m.pause(w, delay) {
			return
		}
		fmt.Fprintf(sink, "---- rbee: engine restarted after it %s ----\n", why)
		start = time.Now()
	}
}

// Restarts in place after a crash: a crash this long after the last restart
// starts the count over.
const (
	crashWindow = 10 * time.Minute
	restartMax  = 30 * time.Second
)

// restartDelay is what the hive does when an engine that was ready readyFor
// exits on its own, after restarts restarts in place within crashWindow. An
// engine that was ready for less than stableAfter is not known to work: its
// exit counts as a failed start and the queen backs off from the model (10
// s, doubling; again is false). One that served well is started again in
// place: at once the first time, then after 1 s, doubling up to restartMax,
// since a crash that repeats is no accident.
func restartDelay(readyFor, stableAfter time.Duration, restarts int) (wait time.Duration, again bool) {
	switch {
	case readyFor < stableAfter:
		return 0, false
	case restarts == 0:
		return 0, true
	}
	return backoff.Policy{First: time.Second, Max: restartMax}.Delay(restarts - 1), true
}

// pause waits d before w's engine starts again; false when w was stopped
// or the hive is closing meanwhile.
func (m *Manager) pause(w *worker, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.stopCh:
		m.loads.WithLabelValues(w.it.Name, "stopped").Inc()
		m.log.Info("worker stopped while waiting to restart", "model", w.it.Name, "instance", w.instance, "why", m.whyStopped(w))
		return false
	case <-m.ctx.Done():
		return false
	}
}

// supervise waits for proc to get ready, then serves with it until it is
// stopped or exits. It returns why when proc exited on its own after it was
// ready, and for how long it was; "" when it was stopped or failed to get
// ready (what happened is logged and recorded then).
func (m *Manager) supervise(it *item, w *worker, proc *launch.Process, out *tail, start time.Time) (readyFor time.Duration, why string) {
	result, why := m.await(it, w, proc, out, start)
	loadTime := time.Since(start)
	if result != "ready" {
		proc.Stop(m.cfg.StopGrace)
		if result == "stopped" {
			m.loads.WithLabelValues(it.Name, result).Inc()
			m.log.Info("worker stopped while loading", "model", it.Name, "instance", w.instance, "why", why)
			return 0, ""
		}
		m.fail(it, w, start, result, why)
		return 0, ""
	}
	m.loads.WithLabelValues(it.Name, "ready").Inc()
	m.loadTime.WithLabelValues(it.Name).Observe(loadTime.Seconds())
	m.mu.Lock()
	w.state, w.readyAt, w.lastUsed = wsapi.ManagedReady, time.Now(), time.Now()
	it.loadMS = loadTime.Milliseconds()
	m.dirty = true
	m.mu.Unlock()
	if m.cfg.Register != nil {
		if err := m.cfg.Register(w.instance, proc.Pid, it.Name, it.Slots); err != nil {
			m.log.Warn("register started worker", "instance", w.instance, "err", err)
		}
	}
	m.log.Info("worker ready", "model", it.Name, "instance", w.instance, "load_time", loadTime.Round(time.Millisecond))
	m.notify()

	// The model's failures are forgotten only once it has served a while:
	// an engine that gets ready and then crashes at the first request
	// keeps backing off longer each time.
	stable := time.NewTimer(m.cfg.StableAfter)
	defer stable.Stop()
	for {
		select {
		case <-stable.C:
			m.mu.Lock()
			forgot := it.failures > 0
			it.failures, it.failReason = 0, ""
			m.mu.Unlock()
			if forgot {
				m.notify()
			}
			continue
		case <-proc.Done():
			m.mu.Lock()
			readyFor = time.Since(w.readyAt)
			m.mu.Unlock()
			return readyFor, fmt.Sprintf("%s after %s ready%s", exitText(proc.Err()), readyFor.Round(time.Second), out.text())
		case <-m.ctx.Done():
			proc.Stop(m.cfg.StopGrace)
		case <-w.stopCh:
			m.drain(w, proc)
			m.log.Info("worker stopped", "model", it.Name, "instance", w.instance, "why", m.whyStopped(w))
		}
		return 0, ""
	}
}

// fail records a start that did not get (or stay) ready: the queen backs off
// from this model on this hive by the failures in a row. w (nil before it
// exists) leaves the list in the same step, so that no report shows the
// failure beside the worker that failed still loading.
func (m *Manager) fail(it *item, w *worker, start time.Time, result, why string) {
	m.loads.WithLabelValues(it.Name, result).Inc()
	m.mu.Lock()
	if w != nil && m.workers[w.instance] == w {
		delete(m.workers, w.instance)
	}
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
	argv, err := it.engine.Argv(Vars(it.Entry, w.instance, Placement{GPUs: w.gpus, VRAMMB: w.vramMB, TotalMB: m.gpuTotals(w.gpus)}))
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

// gpuTotals is the total VRAM of each of gpus, 0 where unknown.
func (m *Manager) gpuTotals(gpus []int) []uint64 {
	if len(gpus) == 0 {
		return nil
	}
	known := m.cfg.SimGPUs
	if len(known) == 0 && m.cfg.GPUs != nil {
		known = m.cfg.GPUs()
	}
	out := make([]uint64, len(gpus))
	for i, g := range gpus {
		for _, k := range known {
			if k.Index == g {
				out[i] = k.TotalVRAMMB
			}
		}
	}
	return out
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
