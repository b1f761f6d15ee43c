package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
)

// AccessLog is where the access log goes (--access-log): standard output,
// for the service manager's journal to keep and rotate, or a file, which
// Reopen opens again after logrotate moved it (SIGHUP).
type AccessLog struct {
	// Logger writes one JSON line per request (observe.go).
	Logger *slog.Logger
	path   string
	mu     sync.Mutex
	f      *os.File
}

// OpenAccessLog opens the access log spec names: "stdout", a file path
// (appended to), or "off"/"" for none (nil).
func OpenAccessLog(spec string, stdout io.Writer) (*AccessLog, error) {
	switch spec {
	case "", "off":
		return nil, nil
	case "stdout", "-":
		return &AccessLog{Logger: slog.New(slog.NewJSONHandler(stdout, nil))}, nil
	}
	a := &AccessLog{path: spec}
	if err := a.Reopen(); err != nil {
		return nil, err
	}
	a.Logger = slog.New(slog.NewJSONHandler(a, nil))
	return a, nil
}

// Write writes one line to the file open now.
func (a *AccessLog) Write(b []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Write(b)
}

// Reopen opens the file again at its path (a no-op for stdout), so that a
// file moved away by logrotate is left to it and a new one begins.
func (a *AccessLog) Reopen() error {
	if a == nil || a.path == "" {
		return nil
	}
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	a.mu.Lock()
	old := a.f
	a.f = f
	a.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// Close closes the file (not stdout).
func (a *AccessLog) Close() error {
	if a == nil || a.path == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Close()
}
