package wsapi

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// maxCorked bounds what a corked connection buffers before it writes anyway.
const maxCorked = 256 << 10

// corkConn lets the feed put a burst of WebSocket messages into one write
// system call. The websocket library flushes after every message, and at 1000
// hives x 10 readers those 10,000 writes a second were half the queen's CPU;
// corked, the feed writes once per flush window per reader.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked bool
	buf    []byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= maxCorked {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what was buffered, giving up at deadline (a reader that
// stopped reading must not hold the writer forever).
func (c *corkConn) uncork(deadline time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.buf) == 0 {
		return nil
	}
	if err := c.Conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	err := c.flushLocked()
	if derr := c.Conn.SetWriteDeadline(time.Time{}); err == nil {
		err = derr
	}
	return err
}

func (c *corkConn) flushLocked() error {
	// One Write: net.Conn writes all of p or returns an error.
	_, err := c.Conn.Write(c.buf)
	// Keep the buffer for the next batch: a fresh one per flush was the
	// feed's largest source of garbage.
	c.buf = c.buf[:0]
	return err
}

// corkHijacker hands the websocket library a corkConn when it hijacks the
// HTTP connection.
type corkHijacker struct {
	http.ResponseWriter
	cc *corkConn
}

func (h *corkHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.cc = &corkConn{Conn: conn}
	// The library's server side writes through brw.Writer (it re-points
	// the writer at the conn only for clients), so point it at the cork.
	if err := brw.Writer.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	brw.Writer.Reset(h.cc)
	return h.cc, brw, nil
}
