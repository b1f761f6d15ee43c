package proxy

import (
	"slices"
	"sync"

	"github.com/rbee/rbee/scheduler"
)

// labelOther labels, in the entry node's metrics, a request for a model the
// cluster serves under no name it answers to.
const labelOther = "other"

// maxModelLabels bounds the served names an entry node learns. They come from
// the queen (grants, refusals), so they are the operator's models, not the
// clients' words; the bound keeps a queen gone wrong from growing the metrics
// without end all the same.
const maxModelLabels = 1024

// modelLabels names models in the entry node's metrics by the name the
// cluster serves them under, never as a client spelt them: model names are
// resolved loosely (scheduler.ModelKeys: case, spaces, paths, quantization
// suffixes), and each spelling made a series of its own that /metrics kept
// for ever. A grant or refusal names the served model; what is answered
// before the queen has spoken (a 403, a client that left while waiting) is
// resolved here against the names learned so far, as the queen would.
type modelLabels struct {
	mu   sync.RWMutex
	keys map[string][]string // served name -> scheduler.ModelKeys of it
}

// learn records a served model name the queen gave.
func (l *modelLabels) learn(name string) {
	if name == "" {
		return
	}
	l.mu.RLock()
	_, known := l.keys[name]
	full := len(l.keys) >= maxModelLabels
	l.mu.RUnlock()
	if known || full {
		return
	}
	ks := scheduler.ModelKeys(name)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = make(map[string][]string)
	}
	if len(l.keys) < maxModelLabels {
		l.keys[name] = ks
	}
}

// of is the label of a request for model: the learned served name it
// answers to (the smallest of several, as the queen picks), else labelOther.
func (l *modelLabels) of(model string) string {
	key := scheduler.RequestKey(model)
	best := ""
	l.mu.RLock()
	for name, ks := range l.keys {
		if (best == "" || name < best) && slices.Contains(ks, key) {
			best = name
		}
	}
	l.mu.RUnlock()
	if best == "" {
		return labelOther
	}
	return best
}
