package gossip

// A slow, lossy network for in-process clusters: what `tc netem` would do to
// a namespace, which this kernel cannot. Every node's memberlist transport
// goes through one slowNet, whose one-way delay and packet loss a test sets
// while the cluster runs.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// slowNet is the delay and loss every link of a cluster has.
type slowNet struct {
	delay atomic.Int64  // one way, time.Duration
	loss  atomic.Uint64 // math.Float64bits of the packet loss ratio
}

// set makes every packet and stream byte take delay to arrive, and loses the
// given share of packets: a lost UDP packet is gone, a lost TCP segment is
// sent again after TCP's retransmission timeout, as iptables' random drop
// does to a real connection.
func (sn *slowNet) set(delay time.Duration, loss float64) {
	sn.delay.Store(int64(delay))
	sn.loss.Store(math.Float64bits(loss))
}

func (sn *slowNet) oneWay() time.Duration { return time.Duration(sn.delay.Load()) }
func (sn *slowNet) lossy() bool           { return math.Float64frombits(sn.loss.Load()) > 0 }
func (sn *slowNet) lost() bool            { return rand.Float64() < math.Float64frombits(sn.loss.Load()) }

// Linux's retransmission timeouts: 1 s for a SYN (or its answer), 200 ms at
// least for data; each doubles on every loss in a row.
const (
	synRTO  = time.Second
	dataRTO = 200 * time.Millisecond
)

// retransmits is how much later than sent a TCP packet arrives when each try
// is lost with the network's loss, or its answer is (handshake: both).
func (sn *slowNet) retransmits(rto time.Duration, both bool) time.Duration {
	var late time.Duration
	for sn.lost() || (both && sn.lost()) {
		late += rto
		rto *= 2
	}
	return late
}

// onSlowNet puts a node's gossip on sn.
func onSlowNet(t *testing.T, sn *slowNet) nodeOption {
	return func(c *Config) {
		c.tweak = func(mc *memberlist.Config) {
			nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort})
			if err != nil {
				t.Fatal(err)
			}
			mc.Transport = newSlowTransport(nt, sn)
		}
	}
}

// slowTransport delays what a node sends by the network's one-way delay, on
// the sender's side, so a request and its answer each take it once.
type slowTransport struct {
	*memberlist.NetTransport
	sn      *slowNet
	packets chan delayed
	streams chan net.Conn
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

// delayed is bytes in flight, to be sent at due.
type delayed struct {
	due  time.Time
	b    []byte
	addr string
}

// inFlight bounds the packets a node has on the wire; more are dropped, as a
// full socket buffer drops them.
const inFlight = 4096

func newSlowTransport(nt *memberlist.NetTransport, sn *slowNet) *slowTransport {
	st := &slowTransport{NetTransport: nt, sn: sn, packets: make(chan delayed, inFlight),
		streams: make(chan net.Conn), done: make(chan struct{})}
	st.wg.Go(func() {
		for {
			select {
			case p := <-st.packets:
				if !st.until(p.due) {
					return
				}
				_, _ = st.NetTransport.WriteTo(p.b, p.addr) // lost on the way, if it fails
			case <-st.done:
				return
			}
		}
	})
	st.wg.Go(func() {
		for {
			select {
			case c := <-nt.StreamCh():
				c = st.slowConn(c)
				select {
				case st.streams <- c:
				case <-st.done:
					c.Close()
					return
				}
			case <-st.done:
				return
			}
		}
	})
	return st
}

// until waits for t, or reports false when the transport shuts down first.
func (st *slowTransport) until(t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-st.done:
		return false
	}
}

func (st *slowTransport) StreamCh() <-chan net.Conn { return st.streams }

func (st *slowTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	now := time.Now()
	if st.sn.lost() {
		return now, nil
	}
	d := st.sn.oneWay()
	if d == 0 {
		return st.NetTransport.WriteTo(b, addr)
	}
	select {
	case st.packets <- delayed{due: now.Add(d), b: bytes.Clone(b), addr: addr}:
	default:
	}
	return now, nil
}

func (st *slowTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return st.WriteTo(b, a.Addr)
}

// DialTimeout takes a round trip for TCP's handshake before the connection is
// there.
func (st *slowTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if rtt := 2*st.sn.oneWay() + st.sn.retransmits(synRTO, true); rtt > 0 {
		if !st.until(time.Now().Add(min(rtt, timeout))) {
			return nil, fmt.Errorf("dial %s: transport shut down", addr)
		}
		if rtt >= timeout {
			return nil, fmt.Errorf("dial %s: i/o timeout (round trip %v)", addr, rtt)
		}
		timeout -= rtt
	}
	c, err := st.NetTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return st.slowConn(c), nil
}

func (st *slowTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return st.DialTimeout(a.Addr, timeout)
}

func (st *slowTransport) Shutdown() error {
	st.once.Do(func() { close(st.done) })
	err := shutdownDraining(st.NetTransport)
	st.wg.Wait()
	return err
}

// shutdownDraining shuts nt down once a wrapping transport stopped reading
// from it: nt's listeners hand each packet and stream over on an unbuffered
// channel, and nt.Shutdown waits for them, so what arrives meanwhile is taken
// and dropped, or the shutdown would hang.
func shutdownDraining(nt *memberlist.NetTransport) error {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-nt.PacketCh():
			case c := <-nt.StreamCh():
				c.Close()
			case <-stop:
				return
			}
		}
	})
	err := nt.Shutdown()
	close(stop)
	wg.Wait()
	return err
}

// slowConn delays c's writes by the network's delay when it was made (one
// delay for the connection's life keeps its bytes in order), and by TCP's
// retransmissions of what is lost.
func (st *slowTransport) slowConn(c net.Conn) net.Conn {
	d := st.sn.oneWay()
	if d == 0 && !st.sn.lossy() {
		return c
	}
	sc := &slowConn{Conn: c, sn: st.sn, delay: d, q: make(chan delayed, 64), closing: make(chan struct{})}
	st.wg.Go(func() { sc.pump(st) })
	return sc
}

// slowConn is a stream whose bytes arrive delay after they were written.
type slowConn struct {
	net.Conn
	sn      *slowNet
	delay   time.Duration
	q       chan delayed
	closing chan struct{}
	once    sync.Once
}

func (c *slowConn) Write(p []byte) (int, error) {
	select {
	case c.q <- delayed{due: time.Now().Add(c.delay + c.sn.retransmits(dataRTO, false)), b: bytes.Clone(p)}:
		return len(p), nil
	case <-c.closing:
		return 0, net.ErrClosed
	}
}

// Close closes the connection once the bytes written before it arrived, as
// TCP's FIN follows the data.
func (c *slowConn) Close() error {
	c.once.Do(func() { close(c.closing) })
	return nil
}

func (c *slowConn) pump(st *slowTransport) {
	defer c.Conn.Close()
	send := func(d delayed) bool {
		if !st.until(d.due) {
			return false
		}
		_, err := c.Conn.Write(d.b)
		return err == nil
	}
	for {
		select {
		case d := <-c.q:
			if !send(d) {
				return
			}
		case <-c.closing:
			for {
				select {
				case d := <-c.q:
					if !send(d) {
						return
					}
				default:
					return
				}
			}
		case <-st.done:
			return
		}
	}
}

// logTally counts a cluster's log records by node, level and message: the
// handler of every node's logger (narrowed With("node", name)).
type logTally struct {
	mu   sync.Mutex
	recs []tallied
	next slog.Handler // the cluster's own log, printed if the test fails
}

type tallied struct {
	node, msg string
	level     slog.Level
}

type tallyHandler struct {
	t    *logTally
	node string
	next slog.Handler
}

// withTally makes c's nodes log through a tally as well as its own log.
func withTally(c *testCluster) *logTally {
	lt := &logTally{next: c.log.Handler()}
	c.log = slog.New(&tallyHandler{t: lt, next: lt.next})
	return lt
}

func (h *tallyHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *tallyHandler) Handle(ctx context.Context, r slog.Record) error {
	h.t.mu.Lock()
	h.t.recs = append(h.t.recs, tallied{node: h.node, msg: r.Message, level: r.Level})
	h.t.mu.Unlock()
	return h.next.Handle(ctx, r)
}

func (h *tallyHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := *h
	out.next = h.next.WithAttrs(as)
	for _, a := range as {
		if a.Key == "node" {
			out.node = a.Value.String()
		}
	}
	return &out
}

func (h *tallyHandler) WithGroup(name string) slog.Handler {
	out := *h
	out.next = h.next.WithGroup(name)
	return &out
}

// mark is where a window of counting starts.
func (lt *logTally) mark() int {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return len(lt.recs)
}

// since returns the records after mark that match.
func (lt *logTally) since(mark int, match func(tallied) bool) []tallied {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	var out []tallied
	for _, r := range lt.recs[mark:] {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// byNode counts records per node, every node of nodes listed.
func byNode(recs []tallied, nodes []*testNode) map[string]int {
	out := map[string]int{}
	for _, n := range nodes {
		out[n.name] = 0
	}
	for _, r := range recs {
		out[r.node]++
	}
	return out
}

// byMessage counts records per message, most frequent first, for a report.
func byMessage(recs []tallied) []string {
	counts := map[string]int{}
	for _, r := range recs {
		msg := r.msg
		if len(msg) > 60 {
			msg = msg[:60]
		}
		counts[msg]++
	}
	var out []string
	for m, n := range counts {
		out = append(out, fmt.Sprintf("%5d %s", n, m))
	}
	slices.Sort(out)
	slices.Reverse(out)
	return out
}
