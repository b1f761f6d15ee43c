package main

// `rbee top`: the cluster live in the terminal. A first /v1/cluster snapshot,
// then the node's feed (hive_telemetry every second, queen events) applied on
// top of it, redrawn in place once a second through renderStatus's lines.
// The pieces a test wants are pure: topState (what is known), topLines (a
// frame), topKey (what a key press means); runTop only wires them to the
// terminal and the network.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

const (
	// topRefresh is how often the screen is redrawn: hives report once a
	// second, so faster shows nothing new.
	topRefresh = time.Second
	// topSnapshotEvery re-reads /v1/cluster while the feed is live: the
	// feed carries hives and queues but not the member list.
	topSnapshotEvery = 5 * time.Second
	// topRetry is the wait between two attempts to reach the node.
	topRetry = time.Second
	// topFeedReadLimit bounds one feed message: a hive's telemetry is at
	// most wsapi.DefaultReadLimit (2 MiB, 4096 workers), a queen event
	// lists every worker id; 8 MiB leaves room for both in a big cluster.
	topFeedReadLimit = 8 << 20
)

// ANSI sequences, understood by every terminal emulator an SSH session ends
// in; no terminfo lookup.
const (
	ansiAltScreen  = "\x1b[?1049h"
	ansiMainScreen = "\x1b[?1049l"
	ansiHideCursor = "\x1b[?25l"
	ansiShowCursor = "\x1b[?25h"
	ansiHome       = "\x1b[H"
	ansiClearLine  = "\x1b[K"
	ansiClearBelow = "\x1b[J"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top",
		Usage: "show the cluster live in the terminal: members, queues, every worker's load and the models loading",
		Description: "Reads a /v1/cluster snapshot from the node at --http-addr, then its live feed\n" +
			"(" + wsapi.FeedPath + "), and redraws once a second. q or Ctrl-C quits. While the\n" +
			"node cannot be reached it shows the last state it knew and retries. When stdout\n" +
			"is not a terminal (or with --once) it prints one frame and exits.",
		Flags:  append(clientFlags(), &cli.BoolFlag{Name: "once", Usage: "print one frame and exit"}),
		Action: runTop,
	}
}

func runTop(c *cli.Context) error {
	key, err := loadKey(c)
	if err != nil {
		return err
	}
	cl, err := newClient(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	addr := httpAddrFlag(c)
	out, isTerminal := terminalOf(c.App.Writer)
	if c.Bool("once") || !isTerminal {
		ctx, cancel := context.WithTimeout(c.Context, statusTimeout)
		defer cancel()
		v, err := fetchCluster(ctx, cl, addr)
		if err != nil {
			return err
		}
		st := &topState{}
		now := time.Now()
		st.apply(topUpdate{View: v}, now)
		st.apply(topUpdate{Live: true}, now)
		// One frame as `rbee status` prints: the terminal's width and
		// colour, or everything, plain, into a pipe or a file.
		opts := screenOptions(c.App.Writer)
		_, err = io.WriteString(c.App.Writer, strings.Join(topLines(st, topScreen{Addr: addr, Now: now, Width: opts.Width, Color: opts.Color}), "\n")+"\n")
		return err
	}
	src := &topSource{addr: addr, key: key}
	return topLive(c.Context, out, os.Stdin, addr, src, colorWanted(true, os.Getenv("NO_COLOR")))
}

// topLive runs the interactive view on the terminal out until q, Ctrl-C or a
// signal, and leaves the terminal as it found it. color paints the worker
// states.
func topLive(ctx context.Context, out, in *os.File, addr string, src *topSource, color bool) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	keys := make(chan []byte, 1)
	if inFd := int(in.Fd()); term.IsTerminal(inFd) {
		old, err := term.MakeRaw(inFd)
		if err != nil {
			return fmt.Errorf("set terminal raw mode: %w", err)
		}
		defer term.Restore(inFd, old)
		// This goroutine may stay blocked in Read after we return (a
		// terminal read cannot be interrupted); the process exits then.
		go readKeys(in, keys)
	}
	fmt.Fprint(out, ansiAltScreen+ansiHideCursor)
	defer fmt.Fprint(out, ansiShowCursor+ansiMainScreen)

	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)

	sctx, cancel := context.WithCancel(ctx)
	updates := make(chan topUpdate, 64)
	var wg sync.WaitGroup
	wg.Go(func() { src.run(sctx, updates) })
	defer wg.Wait()
	defer cancel()

	tick := time.NewTicker(topRefresh)
	defer tick.Stop()
	st := &topState{}
	draw := func() {
		now := time.Now()
		w, h, err := term.GetSize(int(out.Fd()))
		if err != nil {
			w, h = 80, 24
		}
		fmt.Fprint(out, topFrame(topLines(st, topScreen{Addr: addr, Now: now, Width: w, Height: h, Color: color}), w))
	}
	draw()
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-keys:
			if topKey(b) == topQuit {
				return nil
			}
		case u := <-updates:
			now := time.Now()
			wasLive := st.live
			st.apply(u, now)
			// A snapshot or a change of connection shows at once;
			// feed messages wait for the next tick.
			if u.View != nil || u.Err != nil || st.live != wasLive {
				draw()
			}
		case <-winch:
			draw()
		case <-tick.C:
			draw()
		}
	}
}

func readKeys(in io.Reader, keys chan<- []byte) {
	buf := make([]byte, 64)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			keys <- slices.Clone(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// topAction is what a key press asks of `rbee top`.
type topAction int

const (
	topNone topAction = iota
	topQuit
)

// topKey maps what one read from the raw terminal returned to an action: q
// or Q quits, and so do Ctrl-C and Ctrl-D, which raw mode delivers as bytes 3
// and 4 instead of signals. Escape sequences (arrows, ...) are ignored.
func topKey(b []byte) topAction {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case 'q', 'Q', 3, 4:
			return topQuit
		case 0x1b:
			// Skip a CSI or SS3 sequence: ESC [ ... final byte, ESC O x.
			if i+1 < len(b) && (b[i+1] == '[' || b[i+1] == 'O') {
				i += 2
				for i < len(b) && (b[i] < 0x40 || b[i] > 0x7e) {
					i++
				}
			}
		}
	}
	return topNone
}

// topFrame is one screen: home, the lines, each line's rest cleared, and the
// rest of the screen cleared. Lines are joined with CRLF (raw mode does not
// add the CR); the last has no line end, so the screen never scrolls.
func topFrame(lines []string, width int) string {
	var b strings.Builder
	b.WriteString(ansiHome)
	for i, l := range lines {
		if i > 0 {
			b.WriteString("\r\n")
		}
		b.WriteString(l)
		// A full-width line leaves the cursor on the last column, where
		// clearing would erase that column's character.
		if displayWidth(l) < width {
			b.WriteString(ansiClearLine)
		}
	}
	b.WriteString(ansiClearBelow)
	return b.String()
}

// topScreen is what a frame depends on besides the state.
type topScreen struct {
	Addr string
	Now  time.Time
	// Width and Height are the terminal's size; 0 means no limit.
	Width, Height int
	// Color paints worker states (statusOptions.Color).
	Color bool
}

// topLines renders one frame: a title line, the connection's state when it
// is not live, then renderStatus's lines in the rest of the screen.
func topLines(st *topState, s topScreen) []string {
	lines := []string{fmt.Sprintf("rbee top  %s  %s  (q: quit)", termSafe(s.Addr), s.Now.Format("15:04:05"))}
	switch {
	case st.err != nil:
		l := fmt.Sprintf("reconnecting... (attempt %d, for %s)", st.attempts, formatUptime(uint64(s.Now.Sub(st.failingSince)/time.Second)))
		if st.snap != nil {
			l += "; below: the state at " + st.failingSince.Format("15:04:05")
		}
		lines = append(lines, l, "  "+termSafe(shortError(st.err)))
	case st.snap == nil:
		lines = append(lines, "connecting...")
	case !st.live:
		lines = append(lines, "connecting to the feed...")
	}
	if st.snap != nil {
		h := 0
		if s.Height > 0 {
			h = max(s.Height-len(lines), 1)
		}
		opts := statusOptions{Width: s.Width, Height: h, Color: s.Color, Compact: true}
		lines = append(lines, statusLines(st.view(s.Now), s.Now, opts)...)
	}
	if s.Height > 0 && len(lines) > s.Height {
		lines = lines[:s.Height]
	}
	if s.Width > 0 {
		for i, l := range lines {
			lines[i] = cutColumns(l, s.Width)
		}
	}
	return lines
}

// shortError drops the method and URL that net/http puts in its errors
// (Get "http://addr/v1/cluster": ...): the address is in the message
// already, and the cause is what a narrow screen should keep.
func shortError(err error) string {
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = strings.Replace(msg, ue.Error(), ue.Err.Error(), 1)
	}
	return msg
}

// topUpdate is one thing the connection learned.
type topUpdate struct {
	// View is a fresh /v1/cluster snapshot.
	View *api.ClusterView
	// Msg is a feed message: *wsapi.HiveTelemetry or *wsapi.QueenEvent.
	Msg any
	// Live says the feed is connected.
	Live bool
	// Err says the node could not be reached or the feed broke; the
	// source retries.
	Err error
}

// topState is what `rbee top` knows: the last snapshot, and what the feed
// said since, by hive. It is not safe for concurrent use.
type topState struct {
	snap   *api.ClusterView
	snapAt time.Time
	hives  map[string]topHive
	queen  *wsapi.QueenEvent

	live         bool
	err          error
	attempts     int
	failingSince time.Time
}

type topHive struct {
	t  *wsapi.HiveTelemetry
	at time.Time // when it arrived, on this machine's clock
}

// apply records u, which arrived at now.
func (s *topState) apply(u topUpdate, now time.Time) {
	switch {
	case u.Err != nil:
		if s.err == nil {
			s.failingSince = now
		}
		s.err = u.Err
		s.attempts++
		s.live = false
	case u.View != nil:
		// The snapshot is the whole truth as of now: what the feed said
		// before it is older.
		s.snap, s.snapAt = u.View, now
		clear(s.hives)
		s.queen = nil
		s.err, s.attempts = nil, 0
	case u.Live:
		s.live = true
		s.err, s.attempts = nil, 0
	case u.Msg != nil:
		switch m := u.Msg.(type) {
		case *wsapi.HiveTelemetry:
			if s.hives == nil {
				s.hives = map[string]topHive{}
			}
			s.hives[m.HiveID] = topHive{t: m, at: now}
		case *wsapi.QueenEvent:
			s.queen = m
		}
	}
}

// view merges the snapshot and the feed into one ClusterView as of now. A
// hive is online while it reported within the queen's HiveTTL, and its
// workers are in the state the queen sent; past the TTL no message says so,
// so the view marks the hive's workers offline itself. While the node cannot
// be reached the clock stops at the failure, so the view shows the last
// state known rather than every hive going offline.
func (s *topState) view(now time.Time) *api.ClusterView {
	if s.snap == nil {
		return nil
	}
	if s.err != nil {
		now = s.failingSince
	}
	ttl := node.DefaultConfig().HiveTTL
	v := *s.snap
	if q := s.queen; q != nil {
		if q.QueenID != "" {
			v.Queen = q.QueenID
		}
		v.Queues, v.RequestsPerS = q.Queues, q.RequestsPerS
	}
	hives := make([]api.HiveView, 0, len(s.snap.Hives)+len(s.hives))
	for _, h := range s.snap.Hives {
		if _, ok := s.hives[h.HiveID]; ok {
			continue
		}
		// Live on the feed for longer than the TTL and not a word
		// from it: the queen has stopped counting it too.
		if s.live && now.Sub(s.snapAt) > ttl {
			h.Online = false
			h.Workers = offlineWorkers(h.Workers, now.Sub(h.LastSeen))
		}
		hives = append(hives, h)
	}
	for id, h := range s.hives {
		hv := api.HiveView{HiveID: id, Online: now.Sub(h.at) <= ttl, LastSeen: h.at, Workers: h.t.Workers, Leases: h.t.Leases,
			Catalog: h.t.Catalog, GPUs: h.t.GPUs, Managed: h.t.Managed}
		if !hv.Online {
			hv.Workers = offlineWorkers(hv.Workers, now.Sub(h.at))
		}
		hives = append(hives, hv)
	}
	slices.SortFunc(hives, func(a, b api.HiveView) int { return strings.Compare(a.HiveID, b.HiveID) })
	v.Hives = hives
	if len(s.hives) > 0 {
		// The feed reached the queen even if the snapshot could not.
		v.HivesError = ""
	}
	return &v
}

// offlineWorkers is a copy of ws, workers of a hive silent for silent, in
// the state the queen gives such workers.
func offlineWorkers(ws []wsapi.ProcessStats, silent time.Duration) []wsapi.ProcessStats {
	ws = slices.Clone(ws)
	for i := range ws {
		ws[i].State, ws[i].StateReason = scheduler.StateOffline, scheduler.OfflineReason(silent)
	}
	return ws
}

// topSource reads a node: a snapshot, then the feed, again after each
// failure. When the node it reads fails, it tries the other members it has
// seen alive (then the first node again), as the dashboard does, so a view of
// the cluster survives the death of the node it was started on.
type topSource struct {
	addr string // the node named by --http-addr
	key  wsapi.Key
	// alive are the API addresses of the members the last snapshot showed
	// alive; run rotates through them after a failure.
	alive []string
	// retry and snapshotEvery default to topRetry and topSnapshotEvery.
	retry         time.Duration
	snapshotEvery time.Duration
}

// run sends what it learns on out until ctx ends.
func (s *topSource) run(ctx context.Context, out chan<- topUpdate) {
	retry := cmp.Or(s.retry, topRetry)
	addr := s.addr
	for {
		err := s.session(ctx, addr, out)
		if ctx.Err() != nil || !topSend(ctx, out, topUpdate{Err: err}) {
			return
		}
		addr = s.next(addr)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// next is the address to try after addr failed: the next member seen alive,
// in order, and the first node after the last.
func (s *topSource) next(addr string) string {
	cands := []string{s.addr}
	for _, a := range s.alive {
		if a != s.addr {
			cands = append(cands, a)
		}
	}
	i := slices.Index(cands, addr)
	return cands[(i+1)%len(cands)]
}

// learn keeps the API addresses of the members v shows alive.
func (s *topSource) learn(v *api.ClusterView) {
	var alive []string
	for _, m := range v.Members {
		if m.Status == "alive" && m.HTTPAddr != "" {
			alive = append(alive, m.HTTPAddr)
		}
	}
	if len(alive) > 0 {
		s.alive = alive
	}
}

// session reads one snapshot from the node at addr, then its feed until it
// breaks, re-reading the snapshot now and then. It returns why it ended.
func (s *topSource) session(ctx context.Context, addr string, out chan<- topUpdate) error {
	client := api.NewClient(addr, s.key)
	defer client.Close()
	v, err := client.Cluster(ctx)
	if err != nil {
		return err
	}
	s.learn(v)
	if !topSend(ctx, out, topUpdate{View: v}) {
		return ctx.Err()
	}
	dctx, dcancel := context.WithTimeout(ctx, wsapi.DefaultHandshakeTimeout)
	conn, err := client.DialFeed(dctx)
	dcancel()
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(topFeedReadLimit)
	if !topSend(ctx, out, topUpdate{Live: true}) {
		return ctx.Err()
	}

	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		t := time.NewTicker(cmp.Or(s.snapshotEvery, topSnapshotEvery))
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
			// A failure here shows as the feed's: it breaks too.
			v, err := client.Cluster(rctx)
			if err != nil {
				continue
			}
			s.learn(v)
			if !topSend(rctx, out, topUpdate{View: v}) {
				return
			}
		}
	})
	for {
		_, data, err := conn.Read(rctx)
		if err != nil {
			return fmt.Errorf("read feed: %w", err)
		}
		msg, err := wsapi.Decode(data)
		if err != nil {
			continue // a newer node's message, or junk: not ours to show
		}
		switch msg.(type) {
		case *wsapi.HiveTelemetry, *wsapi.QueenEvent:
			if !topSend(rctx, out, topUpdate{Msg: msg}) {
				return ctx.Err()
			}
		}
	}
}

func topSend(ctx context.Context, out chan<- topUpdate, u topUpdate) bool {
	select {
	case out <- u:
		return true
	case <-ctx.Done():
		return false
	}
}
