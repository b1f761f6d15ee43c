package node

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/rbee/rbee/internal/backoff"
)

// tlsHandshakeRecord is the first byte of every TLS connection (a handshake
// record); no HTTP request starts with it.
const tlsHandshakeRecord = 0x16

// sniffTimeout bounds the wait for a new connection's first byte, as
// ReadHeaderTimeout bounds its headers.
const sniffTimeout = 10 * time.Second

// muxListener serves plain HTTP and TLS on one port: each accepted
// connection's first byte says which it speaks. Nodes reach each other over
// TLS on the same port that local clients reach over plain HTTP, so a user
// configures one address.
type muxListener struct {
	net.Listener
	tls *tls.Config

	conns chan net.Conn
	done  chan struct{}
	// ended is closed when the accept loop stops, err its last error.
	// conns itself is never closed: a sniffing goroutine may still be
	// handing on a connection then.
	ended chan struct{}
	err   error
	once  sync.Once
	wg    sync.WaitGroup

	mu       sync.Mutex
	sniffing map[net.Conn]struct{} // closed by Close, so it need not wait sniffTimeout
}

// acceptRetry spaces out Accept after an error (out of file descriptors,
// say), as net/http's Serve does: 5 ms, doubling, at most a second.
var acceptRetry = backoff.Policy{First: 5 * time.Millisecond, Max: time.Second}

func newMuxListener(ln net.Listener, cfg *tls.Config) *muxListener {
	m := &muxListener{Listener: ln, tls: cfg, conns: make(chan net.Conn), done: make(chan struct{}), ended: make(chan struct{}), sniffing: map[net.Conn]struct{}{}}
	m.wg.Go(m.acceptLoop)
	return m
}

func (m *muxListener) acceptLoop() {
	defer close(m.ended)
	retry := backoff.New(acceptRetry)
	for {
		c, err := m.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				m.err = err
				return
			}
			// Out of file descriptors (EMFILE) and the like pass: wait
			// as net/http's Serve does rather than stop serving for good.
			t := time.NewTimer(retry.Delay())
			retry.Advance()
			select {
			case <-m.done:
				t.Stop()
				m.err = err
				return
			case <-t.C:
			}
			continue
		}
		retry.Reset()
		m.wg.Go(func() { m.sniff(c) })
	}
}

// sniff reads the connection's first byte without consuming it, then hands
// the connection on, wrapped in TLS if that byte starts a handshake.
func (m *muxListener) sniff(c net.Conn) {
	m.mu.Lock()
	select {
	case <-m.done:
		m.mu.Unlock()
		c.Close()
		return
	default:
	}
	m.sniffing[c] = struct{}{}
	m.mu.Unlock()
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReaderSize(c, 1)
	b, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	m.mu.Lock()
	delete(m.sniffing, c)
	m.mu.Unlock()
	if err != nil {
		c.Close()
		return
	}
	var out net.Conn = &peekedConn{Conn: c, r: br}
	if b[0] == tlsHandshakeRecord {
		if m.tls == nil {
			c.Close() // TLS to a node that has no key: nothing to answer with
			return
		}
		out = tls.Server(out, m.tls)
	}
	select {
	case m.conns <- out:
	case <-m.done:
		c.Close()
	}
}

func (m *muxListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	case <-m.ended:
		return nil, m.err
	}
}

// Close stops accepting and waits for the connections being sniffed.
func (m *muxListener) Close() error {
	var err error
	m.once.Do(func() {
		m.mu.Lock()
		close(m.done)
		for c := range m.sniffing {
			c.Close()
		}
		m.mu.Unlock()
		err = m.Listener.Close()
		m.wg.Wait()
	})
	return err
}

// peekedConn reads first what sniffing buffered.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
