package main

// `rbee top`: the cluster live in the terminal. A first /v1/cluster snapshot,
// then the node's feed (hive_telemetry every second, queen events) applied on
// top of it, redrawn in place once a second. termview keeps what is known
// and draws it (TopState, TopLines); here are the terminal (raw mode, size,
// keys, signals) and the connection (topSource), which follows the cluster
// to another member when its node dies.

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/rbee/rbee/internal/termview"
	"github.com/rbee/rbee/node/api"
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
	out, isTerminal := termview.TerminalOf(c.App.Writer)
	if c.Bool("once") || !isTerminal {
		ctx, cancel := context.WithTimeout(c.Context, statusTimeout)
		defer cancel()
		v, err := fetchCluster(ctx, cl, addr)
		if err != nil {
			return err
		}
		st := termview.NewTopState(api.DefaultHiveTTL)
		now := time.Now()
		st.Apply(termview.TopUpdate{View: v}, now)
		st.Apply(termview.TopUpdate{Live: true}, now)
		// One frame as `rbee status` prints: the terminal's width and
		// colour, or everything, plain, into a pipe or a file.
		opts := screenOptions(c.App.Writer)
		_, err = io.WriteString(c.App.Writer, strings.Join(termview.TopLines(st, termview.TopScreen{Addr: addr, Now: now, Width: opts.Width, Color: opts.Color}), "\n")+"\n")
		return err
	}
	src := &topSource{addr: addr, key: key}
	return topLive(c.Context, out, os.Stdin, addr, src, termview.ColorWanted(true, os.Getenv("NO_COLOR")))
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
	fmt.Fprint(out, termview.ScreenEnter)
	defer fmt.Fprint(out, termview.ScreenLeave)

	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)

	sctx, cancel := context.WithCancel(ctx)
	updates := make(chan termview.TopUpdate, 64)
	var wg sync.WaitGroup
	wg.Go(func() { src.run(sctx, updates) })
	defer wg.Wait()
	defer cancel()

	tick := time.NewTicker(topRefresh)
	defer tick.Stop()
	st := termview.NewTopState(api.DefaultHiveTTL)
	draw := func() {
		now := time.Now()
		w, h, err := term.GetSize(int(out.Fd()))
		if err != nil {
			w, h = 80, 24
		}
		fmt.Fprint(out, termview.TopFrame(termview.TopLines(st, termview.TopScreen{Addr: addr, Now: now, Width: w, Height: h, Color: color}), w))
	}
	draw()
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-keys:
			if termview.TopKey(b) == termview.TopQuit {
				return nil
			}
		case u := <-updates:
			if st.Apply(u, time.Now()) {
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
func (s *topSource) run(ctx context.Context, out chan<- termview.TopUpdate) {
	retry := cmp.Or(s.retry, topRetry)
	addr := s.addr
	for {
		err := s.session(ctx, addr, out)
		if ctx.Err() != nil || !topSend(ctx, out, termview.TopUpdate{Err: err}) {
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
func (s *topSource) session(ctx context.Context, addr string, out chan<- termview.TopUpdate) error {
	client := api.NewClient(addr, s.key)
	defer client.Close()
	v, err := client.Cluster(ctx)
	if err != nil {
		return err
	}
	s.learn(v)
	if !topSend(ctx, out, termview.TopUpdate{View: v}) {
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
	if !topSend(ctx, out, termview.TopUpdate{Live: true}) {
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
			if !topSend(rctx, out, termview.TopUpdate{View: v}) {
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
			if !topSend(rctx, out, termview.TopUpdate{Msg: msg}) {
				return ctx.Err()
			}
		}
	}
}

func topSend(ctx context.Context, out chan<- termview.TopUpdate, u termview.TopUpdate) bool {
	select {
	case out <- u:
		return true
	case <-ctx.Done():
		return false
	}
}
