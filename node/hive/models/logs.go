package models

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Engine logs: the last keepLogs starts of each model are kept, each cut at
// maxLogBytes (vLLM logs every request), so a long-lived hive's disk does
// not fill with them.
const (
	keepLogs    = 5
	maxLogBytes = 64 << 20
)

// pruneLogs removes all but the newest keep logs of model in dir.
func pruneLogs(dir, model string, keep int) {
	paths, _ := filepath.Glob(filepath.Join(dir, model+"-*.log"))
	type logFile struct {
		path string
		mod  time.Time
	}
	var logs []logFile
	for _, p := range paths {
		// model-<port>.log only: another model's name may start with this one's.
		if _, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), model+"-"), ".log")); err != nil {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			logs = append(logs, logFile{p, st.ModTime()})
		}
	}
	slices.SortFunc(logs, func(a, b logFile) int { return b.mod.Compare(a.mod) })
	for i := keep; i < len(logs); i++ {
		_ = os.Remove(logs[i].path)
	}
}

// capped writes to w until left bytes are written, then drops the rest
// (reporting it written: the engine must not fail for its log).
type capped struct {
	w    io.Writer
	left int64
}

func (c *capped) Write(p []byte) (int, error) {
	if c.left > 0 {
		n := min(int64(len(p)), c.left)
		if _, err := c.w.Write(p[:n]); err != nil {
			c.left = 0
		} else {
			c.left -= n
		}
	}
	return len(p), nil
}

func safeFile(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r < 0x20 {
			return '_'
		}
		return r
	}, name)
}

// A failure's reason quotes the last tailLines lines an engine wrote, each
// cut at maxLineBytes.
const (
	tailLines    = 5
	maxLineBytes = 200
)

// tail keeps the last lines an engine wrote, for a failure's reason.
type tail struct {
	mu    sync.Mutex
	lines []string
	part  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range p {
		if b == '\n' || b == '\r' {
			t.push()
			continue
		}
		if len(t.part) < maxLineBytes {
			t.part = append(t.part, b)
		}
	}
	return len(p), nil
}

func (t *tail) push() {
	line := strings.TrimSpace(clean(string(t.part), maxLineBytes))
	t.part = t.part[:0]
	if line == "" {
		return
	}
	t.lines = append(t.lines, line)
	if len(t.lines) > tailLines {
		t.lines = t.lines[1:]
	}
}

// text is the last lines as ": a | b | c", or "" when it wrote nothing.
func (t *tail) text() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.part) > 0 {
		t.push()
	}
	if len(t.lines) == 0 {
		return ""
	}
	return ": " + strings.Join(t.lines, " | ")
}
