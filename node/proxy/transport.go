package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"time"
)

// syncTransport is an HTTP/1.1 client transport that makes the whole
// exchange on the caller's goroutine: it writes the request and reads the
// response on a kept-alive connection itself. net/http's Transport hands
// every request to a connection's writer goroutine and its response back
// from a reader goroutine, two goroutine hand-offs per request (each a
// thread wake-up when the machine is not busy) and a read-ahead that parks
// in the poller; for the short requests a hive proxies to its workers, and
// an entry node to hives, that was a fifth of the hive's CPU.
//
// It speaks HTTP/1.1 only, over plain TCP or TLS (tlsCfg); a request whose
// URL is neither http nor https goes to fallback.
type syncTransport struct {
	dialer   net.Dialer
	tlsCfg   *tls.Config
	fallback http.RoundTripper

	mu     sync.Mutex
	idle   map[string][]*syncConn // by scheme://host, the newest last
	closed bool
	pruned time.Time // when put last closed the expired idle connections
}

const (
	// syncIdlePerHost bounds the idle connections kept to one host.
	syncIdlePerHost = 256
	// syncIdleTimeout closes a connection idle for longer: the server
	// may have closed it already.
	syncIdleTimeout = 90 * time.Second
)

type syncConn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	key    string
	idleAt time.Time
}

func newSyncTransport(tlsCfg *tls.Config, fallback http.RoundTripper) *syncTransport {
	return &syncTransport{
		dialer:   net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		tlsCfg:   tlsCfg,
		fallback: fallback,
		idle:     make(map[string][]*syncConn),
	}
}

// RoundTrip implements http.RoundTripper.
func (t *syncTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return t.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	key := req.URL.Scheme + "://" + req.URL.Host
	for attempt := 0; ; attempt++ {
		pc, reused, err := t.conn(ctx, key, req)
		if err != nil {
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, err
		}
		resp, written, err := t.exchange(ctx, pc, req)
		if err == nil {
			return resp, nil
		}
		// A kept-alive connection the server had closed (conn checks
		// for that, but the close may cross the request) fails the
		// write: the request goes again on a new one, as net/http
		// does, when its body can be sent again. Once it was written
		// whole it is never sent twice: the server may have acted on
		// it.
		if reused && !written && attempt == 0 && ctx.Err() == nil && stale(err) && (req.Body == nil || req.GetBody != nil) {
			if req.GetBody != nil {
				body, gerr := req.GetBody()
				if gerr != nil {
					return nil, err
				}
				req.Body = body
			}
			continue
		}
		if req.Body != nil {
			req.Body.Close()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
}

// stale reports whether err is what a connection the server closed while
// it was idle gives.
func stale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// exchange writes req on pc and reads the response's head; its body reads
// from pc until it ends, and pc goes back to the idle list then. written
// reports whether the request went out whole.
func (t *syncTransport) exchange(ctx context.Context, pc *syncConn, req *http.Request) (*http.Response, bool, error) {
	// A cancelled request unblocks the read or write it waits in.
	stop := context.AfterFunc(ctx, func() { pc.c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error, written bool) (*http.Response, bool, error) {
		stop()
		pc.c.Close()
		return nil, written, err
	}
	werr := req.Write(pc.bw)
	if werr == nil {
		werr = pc.bw.Flush()
	}
	if werr != nil {
		// A server may answer before it reads the body, and close
		// the connection on a body too large to skip (a refusal, a
		// fenced lease): that answer, already sent, is what counts.
		if ctx.Err() == nil {
			pc.c.SetReadDeadline(time.Now().Add(earlyAnswerWait))
			if resp, err := http.ReadResponse(pc.br, req); err == nil {
				pc.c.SetReadDeadline(time.Time{})
				resp.Body = &syncBody{rc: resp.Body, pc: pc, t: t, stop: stop, ctx: ctx, keep: false}
				return resp, false, nil
			}
		}
		return fail(werr, false)
	}
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return fail(err, true)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // an interim answer: the real one follows
		}
		b := &syncBody{rc: resp.Body, pc: pc, t: t, stop: stop, ctx: ctx, keep: !resp.Close && !req.Close}
		if resp.Body == http.NoBody || resp.ContentLength == 0 {
			b.finish(true)
		}
		resp.Body = b
		return resp, true, nil
	}
}

// earlyAnswerWait bounds the wait for an answer the server sent before a
// write of the request failed.
const earlyAnswerWait = 200 * time.Millisecond

// closedByPeer reports whether an idle connection's other end has closed
// it (or sent what nobody asked for): a peek at the socket, which does not
// block. A connection it cannot look into counts as open.
func closedByPeer(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// No error: 0 bytes (the peer closed it) or 1 (bytes nobody
		// asked for); EAGAIN: open and quiet.
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = err == nil
		return true
	})
	return err != nil || closed
}

// conn returns an idle connection to key, or a new one.
func (t *syncTransport) conn(ctx context.Context, key string, req *http.Request) (*syncConn, bool, error) {
	now := time.Now()
	for {
		t.mu.Lock()
		l := t.idle[key]
		if len(l) == 0 {
			t.mu.Unlock()
			break
		}
		pc := l[len(l)-1]
		l[len(l)-1] = nil
		if t.idle[key] = l[:len(l)-1]; len(l) == 1 {
			delete(t.idle, key)
		}
		t.mu.Unlock()
		// The check is a syscall: outside the lock every hop takes.
		if now.Sub(pc.idleAt) > syncIdleTimeout || closedByPeer(pc.c) {
			// Expired, or closed by the server while idle (an
			// engine's keep-alive timeout: uvicorn's is 5 s).
			pc.c.Close()
			continue
		}
		return pc, true, nil
	}
	addr := req.URL.Host
	if req.URL.Port() == "" {
		port := "80"
		if req.URL.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(req.URL.Hostname(), port)
	}
	c, err := t.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	if req.URL.Scheme == "https" {
		cfg := t.tlsCfg
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = req.URL.Hostname()
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, false, err
		}
		c = tc
	}
	return &syncConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10), key: key}, false, nil
}

// put keeps pc for the next request to its host.
func (t *syncTransport) put(pc *syncConn) {
	pc.idleAt = time.Now()
	t.mu.Lock()
	if t.closed || len(t.idle[pc.key]) >= syncIdlePerHost || pc.br.Buffered() > 0 {
		t.mu.Unlock()
		pc.c.Close()
		return
	}
	t.idle[pc.key] = append(t.idle[pc.key], pc)
	var expired []*syncConn
	if pc.idleAt.Sub(t.pruned) > syncIdleTimeout {
		// Now and then, the connections idle too long: those behind
		// the newest of a busy host, and all of a host not asked
		// again (a worker gone, a hive that left).
		t.pruned = pc.idleAt
		for key, l := range t.idle {
			n := 0
			for n < len(l) && pc.idleAt.Sub(l[n].idleAt) > syncIdleTimeout {
				n++ // oldest first
			}
			expired = append(expired, l[:n]...)
			if n == len(l) {
				delete(t.idle, key)
			} else if n > 0 {
				t.idle[key] = slices.Delete(l, 0, n)
			}
		}
	}
	t.mu.Unlock()
	for _, c := range expired {
		c.c.Close()
	}
}

// Close closes the idle connections and every one whose exchange ends
// from now on.
func (t *syncTransport) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.CloseIdleConnections()
}

// CloseIdleConnections closes the connections kept idle.
func (t *syncTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = make(map[string][]*syncConn)
	t.mu.Unlock()
	for _, l := range idle {
		for _, pc := range l {
			pc.c.Close()
		}
	}
	if ci, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// syncBody is a response body: once read to its end, its connection goes
// back to the idle list; closed before, the connection is closed.
type syncBody struct {
	rc   io.ReadCloser
	pc   *syncConn
	t    *syncTransport
	stop func() bool
	ctx  context.Context
	keep bool

	mu   sync.Mutex
	done bool
}

func (b *syncBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
		if b.ctx.Err() != nil {
			err = b.ctx.Err()
		}
	}
	return n, err
}

func (b *syncBody) Close() error {
	b.finish(false)
	return nil
}

// finish ends the exchange: the connection is kept when the body was read
// whole, the answer allows it and the request was not cancelled.
func (b *syncBody) finish(whole bool) {
	b.mu.Lock()
	if b.done {
		b.mu.Unlock()
		return
	}
	b.done = true
	b.mu.Unlock()
	if b.stop() && whole && b.keep {
		b.t.put(b.pc)
		return
	}
	b.pc.c.Close()
}
