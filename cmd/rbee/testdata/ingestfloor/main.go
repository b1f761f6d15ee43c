// Command ingestfloor is the least a queen can do for its hives' telemetry
// with the WebSocket library rbee uses: it reads every message on /hive
// whole and, every 50 ms, writes what it read as one JSON array to every
// connection on /feed (the batch feed). No decoding, no registry, no
// scheduler, no authentication. BenchmarkIngestFloor measures its CPU with
// the same hives and readers as BenchmarkIngest gives the queen: the part
// of the queen's figure that is the transport itself.
//
// It prints its address on its first line of output.
package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/coder/websocket"
)

type hub struct {
	mu      sync.Mutex
	pending [][]byte
	readers map[chan []byte]bool
}

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	h := &hub{readers: map[chan []byte]bool{}}
	go h.flush()
	mux := http.NewServeMux()
	mux.HandleFunc("/hive", h.hive)
	mux.HandleFunc("/feed", h.feed)
	if err := http.Serve(ln, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func (h *hub) hive(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	var buf bytes.Buffer
	for {
		_, rd, err := conn.Reader(r.Context())
		if err != nil {
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(rd); err != nil {
			return
		}
		msg := bytes.Clone(buf.Bytes())
		h.mu.Lock()
		h.pending = append(h.pending, msg)
		h.mu.Unlock()
	}
}

func (h *hub) feed(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := conn.CloseRead(r.Context())
	ch := make(chan []byte, 64)
	h.mu.Lock()
	h.readers[ch] = true
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.readers, ch)
		h.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-ch:
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := conn.Write(wctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				return
			}
		}
	}
}

func (h *hub) flush() {
	var frame bytes.Buffer
	for range time.Tick(50 * time.Millisecond) {
		h.mu.Lock()
		msgs := h.pending
		h.pending = nil
		readers := make([]chan []byte, 0, len(h.readers))
		for ch := range h.readers {
			readers = append(readers, ch)
		}
		h.mu.Unlock()
		if len(msgs) == 0 {
			continue
		}
		frame.Reset()
		frame.WriteByte('[')
		for i, m := range msgs {
			if i > 0 {
				frame.WriteByte(',')
			}
			frame.Write(m)
		}
		frame.WriteByte(']')
		b := bytes.Clone(frame.Bytes())
		for _, ch := range readers {
			select {
			case ch <- b:
			default: // a reader that fell behind misses a batch
			}
		}
	}
}
