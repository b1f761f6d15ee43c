package termview

// `rbee top`'s screen: what the connection to a node learned (TopState, fed
// TopUpdates), one frame of it (TopLines, TopFrame), and what a key press
// means (TopKey). Reading the node and the terminal is the command's.

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// TopAction is what a key press asks of `rbee top`.
type TopAction int

// The actions.
const (
	TopNone TopAction = iota
	TopQuit
)

// TopKey maps what one read from the raw terminal returned to an action: q
// or Q quits, and so do Ctrl-C and Ctrl-D, which raw mode delivers as bytes 3
// and 4 instead of signals. Escape sequences (arrows, ...) are ignored.
func TopKey(b []byte) TopAction {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case 'q', 'Q', 3, 4:
			return TopQuit
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
	return TopNone
}

// TopFrame is one screen: home, the lines, each line's rest cleared, and the
// rest of the screen cleared. Lines are joined with CRLF (raw mode does not
// add the CR); the last has no line end, so the screen never scrolls.
func TopFrame(lines []string, width int) string {
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

// TopScreen is what a frame depends on besides the state.
type TopScreen struct {
	Addr string
	Now  time.Time
	// Width and Height are the terminal's size; 0 means no limit.
	Width, Height int
	// Color paints worker states (StatusOptions.Color).
	Color bool
}

// TopLines renders one frame: a title line, the connection's state when it
// is not live, then RenderStatus's lines in the rest of the screen.
func TopLines(st *TopState, s TopScreen) []string {
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
		opts := StatusOptions{Width: s.Width, Height: h, Color: s.Color, Compact: true}
		lines = append(lines, StatusLines(st.View(s.Now), s.Now, opts)...)
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

// TopUpdate is one thing the connection learned.
type TopUpdate struct {
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

// TopState is what `rbee top` knows: the last snapshot, and what the feed
// said since, by hive. It is not safe for concurrent use.
type TopState struct {
	// hiveTTL is the queen's: a hive is online while it reported within
	// it (node.Config.HiveTTL).
	hiveTTL time.Duration

	snap   *api.ClusterView
	snapAt time.Time
	hives  map[string]topHive
	queen  *wsapi.QueenEvent

	live         bool
	err          error
	attempts     int
	failingSince time.Time
}

// NewTopState returns a TopState that knows nothing yet, for a cluster
// whose queen counts a hive online while it reported within hiveTTL.
func NewTopState(hiveTTL time.Duration) *TopState {
	return &TopState{hiveTTL: hiveTTL}
}

type topHive struct {
	t  *wsapi.HiveTelemetry
	at time.Time // when it arrived, on this machine's clock
}

// Apply records u, which arrived at now. It reports whether the screen
// should show u at once: a snapshot or a change of connection does, feed
// messages wait for the next refresh.
func (s *TopState) Apply(u TopUpdate, now time.Time) (redraw bool) {
	wasLive := s.live
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
	return u.View != nil || u.Err != nil || s.live != wasLive
}

// View merges the snapshot and the feed into one ClusterView as of now. A
// hive is online while it reported within the queen's HiveTTL, and its
// workers are in the state the queen sent; past the TTL no message says so,
// so the view marks the hive's workers offline itself. While the node cannot
// be reached the clock stops at the failure, so the view shows the last
// state known rather than every hive going offline.
func (s *TopState) View(now time.Time) *api.ClusterView {
	if s.snap == nil {
		return nil
	}
	if s.err != nil {
		now = s.failingSince
	}
	ttl := s.hiveTTL
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
