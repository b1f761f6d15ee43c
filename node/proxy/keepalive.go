package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// keepAliveAfter is how long a streaming request waits for a worker before
// its client is sent a stream of SSE comments: a proxy between the client
// and rbee that cuts idle connections (often at 30 or 60 s) would otherwise
// drop a request waiting for a model to load.
const keepAliveAfter = time.Second

// keepAlive is the response of a streaming request while it waits for a
// lease. Once it has waited keepAliveAfter, each of the queen's reports on it
// becomes a comment line (": rbee queued position=3 eta=4.2s"), which SSE
// clients ignore; that commits the response to 200 and an event stream, so
// what comes later (the worker's stream, or an error) follows in the same
// stream: an error as a data event holding the OpenAI error object, which
// the openai and Vercel AI SDKs raise.
type keepAlive struct {
	http.ResponseWriter
	model string

	mu      sync.Mutex
	since   time.Time
	waiting bool
	latest  *wsapi.LeaseWait // the newest report not written yet
	signal  chan struct{}    // a report came (buffered 1)
	end     chan struct{}    // closed by stop
	done    chan struct{}    // closed when the writer has returned

	// Only the writer goroutine (while waiting) or the handler (after
	// stop) touch these.
	committed bool
	status    int          // asked for after the commit
	errBody   bytes.Buffer // a non-200 answer after the commit
}

// maxErrBody bounds the error answer kept to send as the stream's last
// event.
const maxErrBody = 64 << 10

// commentWriteTimeout bounds one comment's write: a client that stops
// reading must not hold the request (or the writer) forever.
const commentWriteTimeout = 2 * time.Second

// start begins a wait and returns what the lease client calls with the
// queen's reports. The reports come on the node's session reader, which
// must never block on a client: they are handed to a writer goroutine of
// this request's, which stop ends.
func (k *keepAlive) start(now time.Time) func(*wsapi.LeaseWait) {
	k.mu.Lock()
	k.since, k.waiting, k.latest = now, true, nil
	k.signal, k.end, k.done = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	k.mu.Unlock()
	go k.writer(k.signal, k.end, k.done)
	return k.report
}

// stop ends the wait and returns once no comment is being written.
func (k *keepAlive) stop() {
	k.mu.Lock()
	if !k.waiting {
		k.mu.Unlock()
		return
	}
	k.waiting = false
	close(k.end)
	done := k.done
	k.mu.Unlock()
	<-done
}

// report takes the queen's report; it never blocks.
func (k *keepAlive) report(m *wsapi.LeaseWait) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.waiting || time.Since(k.since) < keepAliveAfter-50*time.Millisecond {
		return
	}
	k.latest = m
	select {
	case k.signal <- struct{}{}:
	default:
	}
}

func (k *keepAlive) writer(signal, end, done chan struct{}) {
	defer close(done)
	for {
		ended := false
		select {
		case <-end:
			ended = true // a report taken before the end still goes out
		case <-signal:
		}
		k.mu.Lock()
		m := k.latest
		k.latest = nil
		k.mu.Unlock()
		if m != nil {
			k.comment(m)
		}
		if ended {
			return
		}
	}
}

// comment writes one report as SSE comment lines.
func (k *keepAlive) comment(m *wsapi.LeaseWait) {
	rc := http.NewResponseController(k.ResponseWriter)
	_ = rc.SetWriteDeadline(time.Now().Add(commentWriteTimeout))
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	if !k.committed {
		h := k.ResponseWriter.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		k.ResponseWriter.WriteHeader(http.StatusOK)
		k.committed = true
	}
	line := fmt.Sprintf(": rbee queued position=%d", m.Position)
	if m.ETAMS > 0 {
		line += " eta=" + strconv.FormatFloat(float64(m.ETAMS)/1000, 'f', 1, 64) + "s"
	}
	line += "\n"
	switch {
	case m.Loading != "" && m.LoadingStage != "":
		// ": rbee copying qwen2.5-7b to gpu2 43% of 4.1 GiB at ..."
		stage, rest, _ := strings.Cut(TruncateText(m.LoadingStage, 200), " ")
		line += fmt.Sprintf(": rbee %s %s to %s %s\n", stage, TruncateText(m.Loading, 200), TruncateText(m.LoadingHive, 64), rest)
	case m.Loading != "":
		line += fmt.Sprintf(": rbee loading %s on %s %ds\n", TruncateText(m.Loading, 200), TruncateText(m.LoadingHive, 64), m.LoadingMS/1000)
	}
	_, _ = k.ResponseWriter.Write([]byte(line + "\n"))
	_ = rc.Flush()
}

func (k *keepAlive) WriteHeader(code int) {
	if k.committed {
		k.status = code
		return
	}
	k.ResponseWriter.WriteHeader(code)
	// A stream under way is committed as a waiting one is: a
	// continuation's wait (migrate.go) sends comments, and its refusal
	// comes as the stream's last event.
	k.committed = code == http.StatusOK
}

func (k *keepAlive) Write(b []byte) (int, error) {
	if k.committed && k.status != 0 && k.status != http.StatusOK {
		// An error body is short; a worker's runaway answer is cut.
		if room := maxErrBody - k.errBody.Len(); room > 0 {
			k.errBody.Write(b[:min(len(b), room)])
		}
		return len(b), nil
	}
	return k.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (flushes).
func (k *keepAlive) Unwrap() http.ResponseWriter { return k.ResponseWriter }

// finish sends an error answered after the commit as the stream's last
// event.
func (k *keepAlive) finish() {
	k.stop()
	if !k.committed || k.errBody.Len() == 0 {
		return
	}
	var compact bytes.Buffer
	if json.Compact(&compact, k.errBody.Bytes()) != nil || !json.Valid(compact.Bytes()) {
		compact.Reset()
		b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": k.errBody.String(), "type": "upstream_error",
			"code": strconv.Itoa(k.status)}})
		compact.Write(b)
	}
	_, _ = k.ResponseWriter.Write([]byte("data: " + compact.String() + "\n\n"))
	_ = http.NewResponseController(k.ResponseWriter).Flush()
}
