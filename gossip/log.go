package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// newStdLogger routes memberlist's "[LEVEL] memberlist: msg" lines to slog at
// the matching level, so they follow --log-level instead of going to stderr.
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(&slogWriter{l: l, now: time.Now}, "", 0)
}

type slogWriter struct {
	l   *slog.Logger
	now func() time.Time

	mu sync.Mutex
	// last holds, per symptom, when it was last logged at its own level
	// and how many like it went to debug since.
	last map[string]*symptomSeen
}

type symptomSeen struct {
	at     time.Time
	repeat int
}

// symptoms are the starts of memberlist's warnings that a lossy or slow
// network repeats on every probe round, several a second per node at 20%
// packet loss: each one alone says nothing (failure detection retries, and a
// member that stays silent is logged by this package as failed), so the
// first in symptomQuiet is logged at its level and the rest at debug, their
// count carried by the next one logged. A warning not listed here (a
// conflicting address, a decryption failure) is logged every time.
var symptoms = []string{
	// The probe path: the direct, indirect and TCP fallback pings.
	"Failed fallback TCP ping",
	"Was able to connect to",
	"Failed to send UDP ping",
	"Failed to send UDP compound ping",
	"Failed to send indirect UDP ping",
	"Failed to send indirect ping",
	"Failed to send ack",
	"Failed to send nack",
	"Failed to forward ack",
	// Another member suspected this one, which answered.
	"Refuting a suspect message",
	// Dissemination and anti-entropy over a link that drops.
	"Failed to send gossip",
	"Push/Pull with",
	"Failed to push local state",
	"Failed to read remote state",
	"failed to receive",
	"handler queue full",
}

// symptomQuiet is how long the repeats of a symptom stay at debug: an
// operator watching the logs still learns within a minute that the network
// is losing probes, and how often.
const symptomQuiet = time.Minute

func symptomOf(msg string) string {
	for _, s := range symptoms {
		if strings.HasPrefix(msg, s) {
			return s
		}
	}
	return ""
}

func (w *slogWriter) Write(p []byte) (int, error) {
	msg := bytes.TrimSpace(p)
	level := slog.LevelInfo
	for _, lv := range []struct {
		tag   string
		level slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		// memberlist's INFO lines ("Suspect x has failed", "Marking x as
		// failed") repeat the member events this package logs itself.
		{"[INFO]", slog.LevelDebug},
		{"[WARN]", slog.LevelWarn},
		// memberlist logs a dead peer's refused connection as an error; to an
		// operator that is a warning about the peer, not a fault here.
		{"[ERR]", slog.LevelWarn},
	} {
		if bytes.HasPrefix(msg, []byte(lv.tag)) {
			level = lv.level
			msg = bytes.TrimSpace(msg[len(lv.tag):])
			break
		}
	}
	msg = bytes.TrimPrefix(msg, []byte("memberlist: "))
	s := string(msg)
	attrs := []any{"component", "memberlist"}
	if level > slog.LevelDebug {
		if sym := symptomOf(s); sym != "" {
			var quiet bool
			if quiet, attrs = w.throttle(sym, attrs); quiet {
				level = slog.LevelDebug
			}
		}
	}
	w.l.Log(context.Background(), level, s, attrs...)
	return len(p), nil
}

// throttle reports whether this occurrence of sym goes to debug, and adds to
// attrs, for one that does not, how many went to debug since the last.
func (w *slogWriter) throttle(sym string, attrs []any) (bool, []any) {
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil {
		w.last = make(map[string]*symptomSeen)
	}
	seen := w.last[sym]
	if seen != nil && now.Sub(seen.at) < symptomQuiet {
		seen.repeat++
		return true, attrs
	}
	if seen != nil && seen.repeat > 0 {
		attrs = append(attrs, "repeated", seen.repeat, "over", now.Sub(seen.at).Round(time.Second))
	}
	attrs = append(attrs, "repeats_at_debug_for", symptomQuiet)
	w.last[sym] = &symptomSeen{at: now}
	return false, attrs
}
