package wsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// SessionPath is where the queen accepts hive sessions.
const SessionPath = "/v1/hive/session"

// Defaults for SessionOptions, with the reasons for each number.
const (
	// A handshake is two small messages; a peer that needs longer than this
	// on a LAN is broken or hostile, and holding its slot helps nobody.
	DefaultHandshakeTimeout = 5 * time.Second
	// Telemetry for MaxWorkers workers at ~300 bytes each fits in 1.2 MiB;
	// anything larger is a bug or an attack.
	DefaultReadLimit = 2 << 20
	// handshakeReadLimit bounds what an unauthenticated peer can make us
	// buffer.
	handshakeReadLimit = 4 << 10
	// Pings notice a vanished peer (power loss, cable pulled) whose TCP
	// connection would otherwise look open for minutes.
	DefaultPingInterval = 5 * time.Second
	DefaultPingTimeout  = 5 * time.Second
	// DefaultWriteTimeout bounds one write, so a stuck peer cannot block its
	// writer forever.
	DefaultWriteTimeout = 10 * time.Second
)

// SessionOptions configure both ends of a hive session. Zero values mean the
// defaults above.
type SessionOptions struct {
	// Key is the cluster key. Zero means insecure mode: no proof is asked
	// for or given.
	Key     Key
	Name    string // this end's node name
	Version string // this end's rbee version

	// Interval is the telemetry period the queen asks hives for.
	Interval         time.Duration
	HandshakeTimeout time.Duration
	ReadLimit        int64
	PingInterval     time.Duration
	PingTimeout      time.Duration
	WriteTimeout     time.Duration
	// Header is added to the dial request (the client end only).
	Header http.Header
	// HTTPClient dials (the client end only); nil means http.DefaultClient.
	HTTPClient *http.Client
	// Logger hears what a session does not return as an error (messages
	// it skips); nil discards it.
	Logger *slog.Logger
}

func (o *SessionOptions) withDefaults() SessionOptions {
	var c SessionOptions
	if o != nil {
		c = *o
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.ReadLimit <= 0 {
		c.ReadLimit = DefaultReadLimit
	}
	if c.PingInterval <= 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout <= 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Session is one authenticated hive session, seen from either end.
type Session struct {
	conn *websocket.Conn
	opts SessionOptions
	rbuf bytes.Buffer // reused by readRaw; one reader at a time
	// tdec decodes the peer's reports, reusing what did not change since
	// the last one.
	tdec telemetryDecoder
	// queued holds the rest of a batch frame (see Outbox) for the next
	// readRaw calls.
	queued [][]byte
	// lastRead (unix nanoseconds) lets Keepalive skip pinging a peer that
	// is talking anyway: a hive reporting every second needs no ping.
	lastRead atomic.Int64
	// ignored counts the messages of unknown types skipped (see next).
	ignored atomic.Uint64
	// Peer is the other end's node name, Version its rbee version,
	// Revision its protocol revision (version.go).
	Peer         string
	PeerVersion  string
	PeerRevision int
	// Interval is the telemetry period agreed at handshake.
	Interval time.Duration
}

// NotQueenError is returned by DialHive when the dialled node is not queen. It
// names the queen as that node sees it, which may be fresher than the caller's
// view.
type NotQueenError struct {
	Queen     string `json:"queen"`
	QueenHTTP string `json:"queen_http"`
}

func (e *NotQueenError) Error() string {
	if e.Queen == "" {
		return "not queen (no queen elected yet)"
	}
	return fmt.Sprintf("not queen: queen is %s at %s", e.Queen, e.QueenHTTP)
}

// WriteNotQueen refuses a hive session before the upgrade, naming the queen.
// 421 Misdirected Request says "right protocol, wrong server".
func WriteNotQueen(w http.ResponseWriter, queen, queenHTTP string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusMisdirectedRequest)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
		NotQueenError
	}{"not queen", NotQueenError{Queen: queen, QueenHTTP: queenHTTP}})
}

// AcceptHive upgrades r to a hive session and runs the queen's side of the
// handshake: challenge, verify the hello's proof, welcome. On failure the
// connection is closed with a code saying why and an error is returned.
func AcceptHive(w http.ResponseWriter, r *http.Request, opts *SessionOptions) (*Session, error) {
	o := opts.withDefaults()
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return nil, fmt.Errorf("accept hive session: %w", err)
	}
	s := &Session{conn: conn, opts: o, Interval: o.Interval}
	if err := s.serverHandshake(r.Context()); err != nil {
		return nil, fmt.Errorf("hive session from %s: %w", r.RemoteAddr, err)
	}
	conn.SetReadLimit(o.ReadLimit)
	return s, nil
}

func (s *Session) serverHandshake(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.HandshakeTimeout)
	defer cancel()
	s.conn.SetReadLimit(handshakeReadLimit)
	nonce := newNonce()
	if err := s.write(ctx, Challenge{Type: TypeChallenge, Nonce: nonce, Queen: s.opts.Name, Version: s.opts.Version, Protocol: ProtocolVersion,
		Revision: Revision}); err != nil {
		s.conn.CloseNow()
		return fmt.Errorf("send challenge: %w", err)
	}
	msg, err := s.read(ctx)
	if err != nil {
		return s.fail(CloseCodeFor(err), "handshake", err)
	}
	hello, ok := msg.(*Hello)
	if !ok {
		return s.fail(CloseProtocol, "handshake", fmt.Errorf("expected hello, got %T", msg))
	}
	if hello.Protocol != ProtocolVersion {
		return s.fail(CloseProtocol, "handshake", fmt.Errorf("protocol %d, this queen speaks %d", hello.Protocol, ProtocolVersion))
	}
	if err := ValidName(hello.Name); err != nil {
		return s.fail(CloseMalformed, "hello", err)
	}
	if len(hello.Nonce) > 2*maxNonceBytes {
		return s.fail(CloseMalformed, "hello", fmt.Errorf("%w: nonce too long", ErrInvalid))
	}
	if !s.opts.Key.IsZero() && !s.opts.Key.checkProof(hello.Proof, "hive", nonce, hello.Nonce, hello.Name) {
		return s.fail(CloseAuth, "authentication failed", errors.New("wrong cluster key"))
	}
	// A negative revision is nonsense; reading it as 0 sends the peer
	// only what every build reads.
	s.Peer, s.PeerVersion, s.PeerRevision = hello.Name, hello.Version, max(hello.Revision, 0)
	welcome := Welcome{Type: TypeWelcome, IntervalMS: int(s.Interval / time.Millisecond)}
	if !s.opts.Key.IsZero() {
		welcome.Proof = s.opts.Key.proof("queen", nonce, hello.Nonce, hello.Name)
	}
	if err := s.write(ctx, welcome); err != nil {
		s.conn.CloseNow()
		return fmt.Errorf("send welcome: %w", err)
	}
	return nil
}

// DialHive opens a hive session to the queen at url (ws://host:port/v1/hive/session)
// and runs the hive's side of the handshake. A node that is not queen answers
// with a *NotQueenError.
func DialHive(ctx context.Context, url string, opts *SessionOptions) (*Session, error) {
	o := opts.withDefaults()
	hctx, cancel := context.WithTimeout(ctx, o.HandshakeTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(hctx, url, &websocket.DialOptions{HTTPHeader: o.Header, HTTPClient: o.HTTPClient})
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusMisdirectedRequest {
			nq := &NotQueenError{}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			_ = json.Unmarshal(body, nq)
			return nil, nq
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	s := &Session{conn: conn, opts: o}
	if err := s.clientHandshake(hctx); err != nil {
		return nil, fmt.Errorf("handshake with %s: %w", url, err)
	}
	conn.SetReadLimit(o.ReadLimit)
	return s, nil
}

func (s *Session) clientHandshake(ctx context.Context) error {
	s.conn.SetReadLimit(handshakeReadLimit)
	msg, err := s.read(ctx)
	if err != nil {
		return s.fail(CloseCodeFor(err), "handshake", err)
	}
	ch, ok := msg.(*Challenge)
	if !ok {
		return s.fail(CloseProtocol, "handshake", fmt.Errorf("expected challenge, got %T", msg))
	}
	if ch.Protocol != ProtocolVersion {
		return s.fail(CloseProtocol, "handshake", fmt.Errorf("queen speaks protocol %d, this hive %d", ch.Protocol, ProtocolVersion))
	}
	nonce := newNonce()
	hello := Hello{Type: TypeHello, Name: s.opts.Name, Version: s.opts.Version, Protocol: ProtocolVersion, Nonce: nonce, Revision: Revision}
	if !s.opts.Key.IsZero() {
		hello.Proof = s.opts.Key.proof("hive", ch.Nonce, nonce, s.opts.Name)
	}
	if err := s.write(ctx, hello); err != nil {
		s.conn.CloseNow()
		return fmt.Errorf("send hello: %w", err)
	}
	msg, err = s.read(ctx)
	if err != nil {
		// The queen closes with a reason (bad key, bad name); surface it.
		return s.fail(CloseCodeFor(err), "handshake", err)
	}
	welcome, ok := msg.(*Welcome)
	if !ok {
		return s.fail(CloseProtocol, "handshake", fmt.Errorf("expected welcome, got %T", msg))
	}
	if !s.opts.Key.IsZero() && !s.opts.Key.checkProof(welcome.Proof, "queen", ch.Nonce, nonce, s.opts.Name) {
		return s.fail(CloseAuth, "authentication failed", errors.New("queen does not hold the cluster key"))
	}
	s.Peer, s.PeerVersion, s.PeerRevision = ch.Queen, ch.Version, max(ch.Revision, 0)
	s.Interval = time.Duration(welcome.IntervalMS) * time.Millisecond
	if s.Interval <= 0 {
		s.Interval = time.Second
	}
	return nil
}

// read reads and decodes one message.
func (s *Session) read(ctx context.Context) (any, error) {
	msg, _, err := s.readRaw(ctx)
	return msg, err
}

// readRaw reads one message and returns it decoded and as sent. It reads into
// a buffer kept across messages, where the library's Read grows a fresh
// slice several times per message; what it returns as sent is that buffer,
// valid until the next call (decoded messages share none of it). A queen
// reads a thousand reports a second in a large cluster, and a copy of each
// was a fifth of the memory it allocated for them.
func (s *Session) readRaw(ctx context.Context) (any, []byte, error) {
	if len(s.queued) > 0 {
		data := s.queued[0]
		s.queued[0] = nil
		s.queued = s.queued[1:]
		msg, err := s.tdec.Decode(data)
		return msg, data, err
	}
	typ, r, err := s.conn.Reader(ctx)
	if err != nil {
		return nil, nil, err
	}
	s.rbuf.Reset()
	if _, err := s.rbuf.ReadFrom(r); err != nil {
		return nil, nil, err
	}
	s.lastRead.Store(time.Now().UnixNano())
	if typ != websocket.MessageText {
		return nil, nil, fmt.Errorf("%w: binary frame, want JSON text", ErrMalformed)
	}
	data := s.rbuf.Bytes()
	parts, err := splitBatch(data)
	if err != nil {
		return nil, nil, err
	}
	data, s.queued = parts[0], parts[1:]
	msg, err := s.tdec.Decode(data)
	return msg, data, err
}

// next reads the next message of a type this build knows, skipping the
// others: a peer of a later revision may send one to us by mistake, and a
// message nobody here would act on is no reason to drop every lease on the
// session. The handshake reads with read instead, where only one type will do.
func (s *Session) next(ctx context.Context) (any, []byte, error) {
	for {
		msg, raw, err := s.readRaw(ctx)
		if !errors.Is(err, ErrUnknownType) {
			return msg, raw, err
		}
		if s.ignored.Add(1) == 1 {
			s.opts.Logger.Debug("skipping messages of a type this node does not know", "peer", s.Peer,
				"peer_version", s.PeerVersion, "peer_revision", s.PeerRevision, "err", err)
		}
	}
}

// Read returns the next message from the peer, skipping messages of unknown
// types.
func (s *Session) Read(ctx context.Context) (any, error) {
	msg, _, err := s.next(ctx)
	return msg, err
}

// Ignored returns how many messages of unknown types the session skipped.
func (s *Session) Ignored() uint64 { return s.ignored.Load() }

func (s *Session) write(ctx context.Context, msg any) error {
	b, err := Encode(msg)
	if err != nil {
		return err
	}
	return s.WriteRaw(ctx, b)
}

// Write sends one message, bounded by the write timeout.
func (s *Session) Write(ctx context.Context, msg any) error { return s.write(ctx, msg) }

// WriteRaw sends an already encoded message.
func (s *Session) WriteRaw(ctx context.Context, b []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	return s.conn.Write(ctx, websocket.MessageText, b)
}

// fail closes the session with code and a reason built from what and err, and
// returns err wrapped with what.
func (s *Session) fail(code websocket.StatusCode, what string, err error) error {
	if websocket.CloseStatus(err) != -1 {
		// The peer closed first; nothing to send back.
		s.conn.CloseNow()
		return fmt.Errorf("%s: %w", what, err)
	}
	_ = s.conn.Close(code, CloseReason(what+": "+err.Error()))
	return fmt.Errorf("%s: %w", what, err)
}

// Close closes the session with a code and reason. Safe to call more than once.
func (s *Session) Close(code websocket.StatusCode, reason string) error {
	return s.conn.Close(code, CloseReason(reason))
}

// CloseNow drops the connection without a close handshake.
func (s *Session) CloseNow() { s.conn.CloseNow() }

// Keepalive pings the peer when it has sent nothing for PingInterval, until
// ctx ends or a ping goes unanswered for PingTimeout; then it closes the
// connection. A reader must be running on the session for pongs to be seen.
func (s *Session) Keepalive(ctx context.Context) error {
	return keepalive(ctx, s.conn, s.opts.PingInterval, s.opts.PingTimeout, &s.lastRead)
}

// Check pings the peer now, unless it spoke within quiet, and closes the
// connection when the ping goes unanswered for timeout. A caller that
// expects an answer (a lease request waiting) checks a silent peer sooner
// than Keepalive's interval: a queen behind a cut link sends no reset, and
// the requests would wait on the dead session until the next ping.
func (s *Session) Check(ctx context.Context, quiet, timeout time.Duration) error {
	if time.Since(time.Unix(0, s.lastRead.Load())) < quiet {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	err := s.conn.Ping(pctx)
	cancel()
	if err != nil && ctx.Err() == nil {
		s.conn.CloseNow()
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// keepalive pings c every interval, skipping the ping when lastRead (if not
// nil) shows the peer spoke within the interval.
func keepalive(ctx context.Context, c *websocket.Conn, every, timeout time.Duration, lastRead *atomic.Int64) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			if lastRead != nil && now.Sub(time.Unix(0, lastRead.Load())) < every {
				continue
			}
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A peer that answers no ping answers no close handshake
			// either; Close would wait 5 s for it.
			c.CloseNow()
			return fmt.Errorf("ping: %w", err)
		}
	}
}

// Serve is the queen's read loop for an accepted session: it decodes each
// message, validates it (telemetry must belong to this hive; lease messages
// must be well formed) and hands it to handle both decoded and as received
// (valid JSON, ready to relay without re-encoding; handle may keep the
// decoded message, but raw only until it returns: copy it to keep it). A
// message of a type the queen does not know is skipped (see next); one it
// knows but does not take from peers (a grant, a challenge) closes the
// session, as does an error from handle. It returns when the session ends; a
// bad message closes the session with a code and reason that say what was
// wrong.
func (s *Session) Serve(ctx context.Context, handle func(msg any, raw []byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Keepalive(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	for {
		msg, raw, err := s.next(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != -1 || ctx.Err() != nil || errors.Is(err, io.EOF) {
				s.conn.CloseNow()
				return err
			}
			if errors.Is(err, ErrMalformed) {
				return s.fail(CloseCodeFor(err), "bad message", err)
			}
			s.conn.CloseNow()
			return err
		}
		switch m := msg.(type) {
		case *HiveTelemetry:
			err = m.Validate(s.Peer)
		case *LeaseRequest:
			err = m.Validate()
		case *LeaseCancel:
			err = m.Validate()
		case *LeaseRelease:
			err = m.Validate()
		case *LeaseSpareRequest: // spare leases (spare.go)
			err = m.Validate()
		case *Conversations:
			err = m.Validate()
		case *LeaseUses:
			err = m.Validate()
		case *UsageReport: // usage accounting (usage.go)
			err = m.Validate()
		case *Migration: // migrated streams (migration.go)
			err = m.Validate()
		default:
			return s.fail(CloseProtocol, "bad message", fmt.Errorf("%T not expected from a hive", msg))
		}
		if err != nil {
			return s.fail(CloseCodeFor(err), "bad message", err)
		}
		if err := handle(msg, raw); err != nil {
			return s.fail(CloseProtocol, "bad message", err)
		}
	}
}
