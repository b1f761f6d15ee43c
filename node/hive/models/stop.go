package models

import (
	"fmt"
	"time"

	"github.com/rbee/rbee/node/hive/launch"
	"github.com/rbee/rbee/wsapi"
)

// unloadIdle stops the ready workers that served nothing for IdleUnload.
func (m *Manager) unloadIdle(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.workers {
		if w.state != wsapi.ManagedReady || w.stopWhy != "" {
			continue
		}
		m.refreshLeases(w)
		if w.leases == 0 && now.Sub(w.lastUsed) >= m.cfg.IdleUnload {
			m.stopLocked(w, fmt.Sprintf("idle for %s", now.Sub(w.lastUsed).Round(time.Second)))
		}
	}
}

func (m *Manager) refreshLeases(w *worker) {
	if m.cfg.Leases == nil {
		return
	}
	n, last := m.cfg.Leases(wsapi.WorkerID(wsapi.ManagedGroup, w.instance))
	w.leases = n
	if last.After(w.lastUsed) {
		w.lastUsed = last
	}
}

// stopLocked asks w to stop: it takes no new lease, and its supervisor
// stops it once the leases it serves have ended.
func (m *Manager) stopLocked(w *worker, why string) {
	if w.stopWhy != "" {
		return
	}
	w.stopWhy = why
	if w.state == wsapi.ManagedReady {
		w.state = wsapi.ManagedDraining
	}
	if m.cfg.Drain != nil {
		m.cfg.Drain(wsapi.WorkerID(wsapi.ManagedGroup, w.instance))
	}
	close(w.stopCh)
	m.log.Info("stopping worker", "model", w.it.Name, "instance", w.instance, "why", why)
	m.notify()
}

func (m *Manager) whyStopped(w *worker) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return w.stopWhy
}

// drain waits for w's leases to end (it takes no new one), then stops it.
func (m *Manager) drain(w *worker, proc *launch.Process) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		m.mu.Lock()
		m.refreshLeases(w)
		n := w.leases
		m.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-proc.Done():
			return
		case <-m.ctx.Done():
			proc.Stop(m.cfg.StopGrace)
			return
		case <-t.C:
		}
	}
	proc.Stop(m.cfg.StopGrace)
}
