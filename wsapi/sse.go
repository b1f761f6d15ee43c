package wsapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"time"
)

// The feed as Server-Sent Events: the transport the seed's dashboard reads
// (its queen broadcast HeartbeatEvent values "to SSE channel", served at
// GET /v1/heartbeats/stream). Each event is one unnamed SSE message whose data
// is the event's JSON, exactly what a WebSocket reader gets in one text
// message:
//
//	data: {"type":"hive_telemetry","hive_id":"hive-gpu-1",...}
//
//	data: {"type":"queen","workers_online":3,...}
//
// No "event:" name (the seed tells its events apart by the JSON "type" tag,
// and a browser's EventSource hands only unnamed events to onmessage) and no
// "id:" (a reader that reconnects gets the live feed, not a replay).

// DefaultSSEPingInterval is how often an idle SSE feed writes a comment line
// (": ping"): proxies and load balancers commonly cut a response that sends
// nothing for 30-60 s, and a write is also how the node notices a reader that
// has vanished. The queen's own event every 2.5 s keeps a live feed busy; this
// covers a node with no queen to relay.
const DefaultSSEPingInterval = 15 * time.Second

// sseMediaType is what a request's Accept header names to get SSE.
const sseMediaType = "text/event-stream"

// ssePing is the keep-alive comment.
var ssePing = []byte(": ping\n\n")

// WantsSSE reports whether r asks for the feed as Server-Sent Events: its
// Accept header names text/event-stream and it is no WebSocket upgrade (a
// WebSocket stays the default).
func WantsSSE(r *http.Request) bool {
	for _, v := range r.Header.Values("Upgrade") {
		if strings.Contains(strings.ToLower(v), "websocket") {
			return false
		}
	}
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == sseMediaType && params["q"] != "0" {
				return true
			}
		}
	}
	return false
}

// serveSSE streams the hub's events to r as SSE until the reader leaves, falls
// behind (the hub drops it, and the response ends), or ctx ends. Events are
// batched and flushed as the WebSocket feed batches them.
func serveSSE(ctx context.Context, w http.ResponseWriter, r *http.Request, h *Hub, cfg feedConfig) error {
	rc := http.NewResponseController(w)
	sub := h.Subscribe()
	defer h.Unsubscribe(sub)

	hd := w.Header()
	hd.Set("Content-Type", sseMediaType)
	hd.Set("Cache-Control", "no-cache")
	// nginx and others buffer responses unless told not to.
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) error {
		// A reader that stopped reading blocks a write once its socket
		// is full; the deadline bounds that, as the WebSocket feed's
		// write timeout does. Writers that cannot set one (a recorder
		// in tests) are left without.
		if err := rc.SetWriteDeadline(time.Now().Add(cfg.session.WriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	// The headers go now, so that the reader knows the feed is open
	// (EventSource's onopen) before the first event.
	if err := rc.Flush(); err != nil {
		return fmt.Errorf("write feed: %w", err)
	}

	var buf []byte
	loop := feedLoop{sub: sub, window: cfg.window, gone: r.Context().Done(),
		write: func(batch [][]byte) error {
			buf = buf[:0]
			for _, m := range batch {
				buf = appendSSE(buf, m)
			}
			return write(buf)
		},
		idleEvery: cfg.ssePing,
		idle:      func() error { return write(ssePing) },
	}
	switch end, err := loop.run(ctx); end {
	case feedShutdown, feedReaderGone:
		return nil
	case feedTooSlow:
		return errFeedTooSlow
	default:
		return fmt.Errorf("write feed: %w", err)
	}
}

// appendSSE appends msg to b as one SSE message: a "data: " line per line of
// msg, then a blank line. rbee's events are single-line JSON, so that is one
// line; a line break inside msg (which SSE would read as the end of the
// field) starts another data line, which the reader joins back with "\n".
func appendSSE(b, msg []byte) []byte {
	for {
		b = append(b, "data: "...)
		i := bytes.IndexAny(msg, "\r\n")
		if i < 0 {
			b = append(b, msg...)
			break
		}
		b = append(b, msg[:i]...)
		b = append(b, '\n')
		if msg[i] == '\r' && i+1 < len(msg) && msg[i+1] == '\n' {
			i++
		}
		msg = msg[i+1:]
	}
	return append(b, '\n', '\n')
}
