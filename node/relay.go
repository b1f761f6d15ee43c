package node

import (
	"context"
	"fmt"
	"net/http"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/internal/backoff"
	"github.com/rbee/rbee/wsapi"
)

// runRelay makes a non-queen node's feed the queen's feed: while this node has
// feed readers and another node is queen, it reads the queen's feed and
// republishes every event to its own readers. Readers stay connected across a
// failover; only the upstream changes.
func (n *Node) runRelay(ctx context.Context) error {
	retry := backoff.New(redial)
	for {
		readers, readersChanged := n.hub.Readers()
		q, ok, queenChanged := n.gossip.WatchQueen()
		if readers == 0 || !ok || q.Name == n.cfg.Name {
			select {
			case <-ctx.Done():
				return nil
			case <-readersChanged:
			case <-queenChanged:
			}
			continue
		}
		err := n.relayOnce(ctx, q.HTTPAddr, queenChanged)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			retry.Reset()
			continue
		}
		n.log.Debug("feed relay", "queen", q.Name, "err", err, "retry_in", retry.Delay())
		if !retry.Wait(ctx, queenChanged) {
			return nil
		}
	}
}

// relayOnce copies the feed of the queen at addr into the hub until the feed
// breaks, the queen changes or the last reader leaves. It returns nil for the
// last two.
func (n *Node) relayOnce(ctx context.Context, addr string, queenChanged <-chan struct{}) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopped := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			readers, changed := n.hub.Readers()
			if readers == 0 {
				close(stopped)
				cancel()
				return
			}
			select {
			case <-changed:
			case <-queenChanged:
				close(stopped)
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-watchDone
	}()

	dctx, dcancel := context.WithTimeout(ctx, wsapi.DefaultHandshakeTimeout)
	// In batches: the queen then writes this node 20 messages a second,
	// not one per hive report. A queen that predates batches sends
	// single events, which FeedEvents passes through.
	conn, _, err := websocket.Dial(dctx, n.url(addr, wsapi.FeedPath+"?"+wsapi.FeedBatchParam+"=1", true), &websocket.DialOptions{HTTPClient: n.hc})
	dcancel()
	if err != nil {
		return relayResult(stopped, fmt.Errorf("dial queen feed %s: %w", addr, err))
	}
	defer conn.CloseNow()
	// A batch holds up to a megabyte of events, or one event of up to
	// the usual limit.
	conn.SetReadLimit(wsapi.DefaultReadLimit + 1<<20)
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return relayResult(stopped, fmt.Errorf("read queen feed %s: %w", addr, err))
		}
		events, err := wsapi.FeedEvents(data)
		if err != nil {
			return relayResult(stopped, fmt.Errorf("read queen feed %s: %w", addr, err))
		}
		for _, ev := range events {
			n.hub.Publish(ev)
		}
	}
}

func relayResult(stopped <-chan struct{}, err error) error {
	select {
	case <-stopped:
		return nil
	default:
		return err
	}
}

// feedContext is the context of a feed reader's request, ended also when the
// node begins to shut down. http.Server.Shutdown closes the listener first,
// then waits for the responses in flight, and an SSE feed never ends by
// itself; a WebSocket feed, hijacked, would end only once Shutdown returned.
func (n *Node) feedContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	ml, ok := n.ln.(*muxListener)
	if !ok {
		return ctx, cancel
	}
	go func() {
		select {
		case <-ml.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
