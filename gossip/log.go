package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// newStdLogger routes memberlist's "[LEVEL] memberlist: msg" lines to slog at
// the matching level, so they follow --log-level instead of going to stderr.
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(&slogWriter{l: l}, "", 0)
}

type slogWriter struct{ l *slog.Logger }

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
	w.l.Log(context.Background(), level, string(msg), "component", "memberlist")
	return len(p), nil
}
