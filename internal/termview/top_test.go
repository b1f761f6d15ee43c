package termview

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// hiveTTL is what `rbee top` judges hives by between two views: the
// node's default.
const hiveTTL = api.DefaultHiveTTL

// liveTopState is a TopState that read the fixture at statusNow and is
// connected to the feed.
func liveTopState(t *testing.T) *TopState {
	t.Helper()
	v, _ := loadClusterFixture(t)
	st := NewTopState(hiveTTL)
	st.Apply(TopUpdate{View: v}, statusNow)
	st.Apply(TopUpdate{Live: true}, statusNow)
	return st
}

func TestTopLines_Golden(t *testing.T) {
	refused := fmt.Errorf("reach node at 127.0.0.1:7833: %w", &url.Error{Op: "Get", URL: "http://127.0.0.1:7833/v1/cluster",
		Err: errors.New("dial tcp 127.0.0.1:7833: connect: connection refused")})
	for _, tc := range []struct {
		name          string
		width, height int
		after         time.Duration // since the snapshot
		state         func(t *testing.T) *TopState
	}{
		{"top_fits.golden", 140, 40, time.Second, liveTopState},
		{"top_80x16.golden", 80, 16, time.Second, liveTopState},
		{"top_hives_silent.golden", 140, 40, 5 * time.Second, liveTopState},
		{"top_reconnecting.golden", 100, 16, 5 * time.Second, func(t *testing.T) *TopState {
			st := liveTopState(t)
			st.Apply(TopUpdate{Err: refused}, statusNow.Add(2*time.Second))
			st.Apply(TopUpdate{Err: refused}, statusNow.Add(3*time.Second))
			return st
		}},
		{"top_connecting.golden", 100, 14, 5 * time.Second, func(t *testing.T) *TopState {
			st := NewTopState(hiveTTL)
			st.Apply(TopUpdate{Err: refused}, statusNow.Add(-time.Second))
			return st
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := TopLines(tc.state(t), TopScreen{Addr: "127.0.0.1:7833", Now: statusNow.Add(tc.after), Width: tc.width, Height: tc.height})
			checkFits(t, lines, tc.width, tc.height)
			checkGolden(t, tc.name, strings.Join(lines, "\n")+"\n")
		})
	}
}

// checkFits fails t unless lines fit a width x height screen.
func checkFits(t *testing.T, lines []string, width, height int) {
	t.Helper()
	if len(lines) > height {
		t.Errorf("%d lines on a screen of %d", len(lines), height)
	}
	for i, l := range lines {
		if n := displayWidth(l); n > width {
			t.Errorf("line %d is %d wide on a screen of %d: %q", i, n, width, l)
		}
	}
}

var moreRE = regexp.MustCompile(`^\+(\d+) more (members|models|workers|gpus)$`)

// TestTopLines_EverySize draws the fixture on screens from 1x1 up: every
// frame fits, and rows are either shown or counted in a "+N more" line,
// never lost.
func TestTopLines_EverySize(t *testing.T) {
	st := liveTopState(t)
	v := st.View(statusNow)
	total := map[string]int{"members": len(v.Members), "models": len(v.Queues), "workers": 0}
	for _, h := range v.Hives {
		total["workers"] += len(h.Workers)
	}
	full := TopLines(st, TopScreen{Addr: "a", Now: statusNow})
	for height := 1; height <= len(full)+2; height++ {
		for _, width := range []int{1, 20, 80, 200} {
			lines := TopLines(st, TopScreen{Addr: "a", Now: statusNow, Width: width, Height: height})
			checkFits(t, lines, width, height)
			if width < 200 || height < 12 {
				continue // cut lines and a cut bottom lose counts
			}
			seen := map[string]int{}
			section := ""
			for _, l := range lines {
				switch {
				case strings.HasPrefix(l, "MEMBER "):
					section = "members"
				case strings.HasPrefix(l, "MODEL "):
					section = "models"
				case strings.HasPrefix(l, "HIVE "):
					section = "workers"
				case l == "" || strings.HasPrefix(l, "* ") || strings.HasPrefix(l, "offline hives: ") || strings.HasPrefix(l, "hives without workers: "):
					section = ""
				case moreRE.MatchString(l):
					m := moreRE.FindStringSubmatch(l)
					n, _ := strconv.Atoi(m[1])
					seen[m[2]] += n
					section = ""
				case section != "":
					seen[section]++
				}
			}
			for k, n := range total {
				if seen[k] != n {
					t.Errorf("%dx%d: %d %s shown or counted, want %d:\n%s", width, height, seen[k], k, n, strings.Join(lines, "\n"))
				}
			}
		}
	}
}

func TestTopKey(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want TopAction
	}{
		{"q", TopQuit},
		{"Q", TopQuit},
		{"\x03", TopQuit}, // Ctrl-C in raw mode
		{"\x04", TopQuit}, // Ctrl-D
		{"x", TopNone},
		{"", TopNone},
		{"\r", TopNone},
		{"abq", TopQuit}, // pasted or typed ahead
		{"\x1b[A", TopNone},
		{"\x1b[1;5Q", TopNone}, // Ctrl-F2: ends in Q, not a q key
		{"\x1bOQ", TopNone},    // F2
		{"\x1b[Aq", TopQuit},
		{"\x1b", TopNone}, // Escape alone
	} {
		if got := TopKey([]byte(tc.in)); got != tc.want {
			t.Errorf("TopKey(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestTop_Frame(t *testing.T) {
	got := TopFrame([]string{"abc", "", "12345", "\x1b[32mabcde\x1b[0m"}, 5)
	// A coloured line as wide as the screen is full: no clearing.
	want := "\x1b[H" + "abc\x1b[K" + "\r\n\x1b[K" + "\r\n12345" + "\r\n\x1b[32mabcde\x1b[0m" + "\x1b[J"
	if got != want {
		t.Errorf("frame = %q, want %q", got, want)
	}
}

// TestTopLines_Color: the live view's colours change no text and no
// layout, and its frames fit the screen by what shows, at every width.
func TestTopLines_Color(t *testing.T) {
	st := liveTopState(t)
	for _, width := range []int{1, 12, 22, 40, 80, 100, 160} {
		s := TopScreen{Addr: "127.0.0.1:7833", Now: statusNow.Add(time.Second), Width: width, Height: 40}
		plain := TopLines(st, s)
		s.Color = true
		color := TopLines(st, s)
		checkFits(t, color, width, 40)
		if width >= 80 && !strings.Contains(strings.Join(color, "\n"), "\x1b[33msaturated\x1b[0m") {
			t.Errorf("width %d: no colour in\n%s", width, strings.Join(color, "\n"))
		}
		for i := range color {
			if got := ansiRE.ReplaceAllString(color[i], ""); got != plain[i] {
				t.Errorf("width %d, line %d: %q without its colours, want %q", width, i, got, plain[i])
			}
		}
	}
}

func TestTopState(t *testing.T) {
	ttl := hiveTTL
	tel := func(hive string, workers ...string) *wsapi.HiveTelemetry {
		m := &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: hive, Workers: []wsapi.ProcessStats{}}
		for _, w := range workers {
			m.Workers = append(m.Workers, wsapi.ProcessStats{Group: "llm", Instance: w, Slots: 1})
		}
		m.Leases = []wsapi.LeaseInfo{{LeaseID: "x", Worker: "llm/" + workers[0], Model: "m", Entry: "e"}}
		return m
	}
	hive := func(v *api.ClusterView, id string) *api.HiveView {
		for i := range v.Hives {
			if v.Hives[i].HiveID == id {
				return &v.Hives[i]
			}
		}
		return nil
	}
	t0 := statusNow

	t.Run("telemetry replaces the snapshot's hive and adds new ones", func(t *testing.T) {
		st := liveTopState(t)
		st.Apply(TopUpdate{Msg: tel("gpu-b", "1", "2", "3")}, t0.Add(time.Second))
		st.Apply(TopUpdate{Msg: tel("new", "7")}, t0.Add(time.Second))
		v := st.View(t0.Add(time.Second))
		if h := hive(v, "gpu-b"); h == nil || !h.Online || len(h.Workers) != 3 || len(h.Leases) != 1 {
			t.Errorf("gpu-b: %+v", h)
		}
		if h := hive(v, "new"); h == nil || !h.Online {
			t.Errorf("new: %+v", h)
		}
		if len(v.Hives) != 5 || v.Hives[0].HiveID != "gpu-a" || v.Hives[4].HiveID != "new" {
			t.Errorf("hives not sorted, or lost: %+v", v.Hives)
		}
	})
	t.Run("a hive silent for the TTL goes offline", func(t *testing.T) {
		st := liveTopState(t)
		st.Apply(TopUpdate{Msg: tel("gpu-b", "1")}, t0.Add(time.Second))
		if h := hive(st.View(t0.Add(time.Second+ttl)), "gpu-b"); !h.Online {
			t.Error("offline at the TTL")
		}
		v := st.View(t0.Add(time.Second + ttl + time.Millisecond))
		if h := hive(v, "gpu-b"); h.Online {
			t.Error("online past the TTL")
		}
		// gpu-a said nothing on the feed since the snapshot.
		if h := hive(v, "gpu-a"); h.Online {
			t.Error("gpu-a, silent on a live feed past the TTL, still online")
		}
		// No message says a silent hive's workers are offline: the view
		// does, as the queen would, and leaves what it was given alone.
		for _, id := range []string{"gpu-a", "gpu-b"} {
			for _, w := range hive(v, id).Workers {
				if w.State != scheduler.StateOffline || !strings.HasPrefix(w.StateReason, "its hive has not reported for ") {
					t.Errorf("%s %s/%s: state %q (%q), want offline", id, w.Group, w.Instance, w.State, w.StateReason)
				}
			}
		}
		if w := hive(st.View(t0), "gpu-a").Workers[0]; w.State == scheduler.StateOffline {
			t.Errorf("marking gpu-a offline changed the snapshot: %+v", w)
		}
	})
	t.Run("the queen event sets queen and queues", func(t *testing.T) {
		st := liveTopState(t)
		st.Apply(TopUpdate{Msg: &wsapi.QueenEvent{Type: wsapi.TypeQueen, QueenID: "n1", Queues: []wsapi.QueueStats{{Model: "z", Waiting: 9}}, RequestsPerS: 7}}, t0)
		v := st.View(t0)
		if v.Queen != "n1" || len(v.Queues) != 1 || v.Queues[0].Model != "z" || v.RequestsPerS != 7 {
			t.Errorf("view: queen %q, queues %+v, %v req/s", v.Queen, v.Queues, v.RequestsPerS)
		}
		// A fresh snapshot is newer than what the feed said before it.
		snap, _ := loadClusterFixture(t)
		st.Apply(TopUpdate{View: snap}, t0.Add(time.Second))
		if v := st.View(t0.Add(time.Second)); v.Queen != "n0" || len(v.Queues) != 2 {
			t.Errorf("after a snapshot: queen %q, queues %+v", v.Queen, v.Queues)
		}
	})
	t.Run("unreachable: the clock stops, attempts count", func(t *testing.T) {
		st := liveTopState(t)
		st.Apply(TopUpdate{Msg: tel("gpu-b", "1")}, t0.Add(time.Second))
		for i := range 3 {
			st.Apply(TopUpdate{Err: errors.New("refused")}, t0.Add(time.Duration(2+i)*time.Second))
		}
		if st.attempts != 3 || !st.failingSince.Equal(t0.Add(2*time.Second)) || st.live {
			t.Errorf("attempts %d, failing since %v, live %v", st.attempts, st.failingSince, st.live)
		}
		if h := hive(st.View(t0.Add(time.Hour)), "gpu-b"); !h.Online {
			t.Error("the last state known should show while reconnecting")
		}
		st.Apply(TopUpdate{Live: true}, t0.Add(5*time.Second))
		if st.err != nil || st.attempts != 0 {
			t.Errorf("live again: err %v, attempts %d", st.err, st.attempts)
		}
	})
}

// TestTopLines_ModelLifecycle: from the feed, `rbee top` shows a loading
// worker with its time so far, each model's waiting requests and expected
// wait, and the catalog entries that failed, with the reason; entries that
// are fine are only counted. The snapshot carries none of it here: the
// feed's telemetry brings it.
func TestTopLines_ModelLifecycle(t *testing.T) {
	v := lifecycleFixture()
	snap := *v
	snap.Hives = slices.Clone(v.Hives)
	for i := range snap.Hives {
		snap.Hives[i].Catalog, snap.Hives[i].GPUs, snap.Hives[i].Managed = nil, nil, nil
	}
	st := NewTopState(hiveTTL)
	st.Apply(TopUpdate{View: &snap}, statusNow)
	st.Apply(TopUpdate{Live: true}, statusNow)
	for _, h := range v.Hives {
		st.Apply(TopUpdate{Msg: hiveTelemetry(h)}, statusNow)
	}
	st.Apply(TopUpdate{Msg: &wsapi.QueenEvent{Type: wsapi.TypeQueen, QueenID: "gpu-a", Queues: v.Queues}}, statusNow)
	for _, size := range [][2]int{{160, 60}, {100, 40}} {
		lines := TopLines(st, TopScreen{Addr: "a", Now: statusNow.Add(time.Second), Width: size[0], Height: size[1]})
		checkFits(t, lines, size[0], size[1])
		for _, w := range [][]string{
			{"qwen-32b", "loading", "3", "~4.2s", "loading on gpu-a 12s"},
			{"mistral-7b", "unavailable", "1"},
			{"models/30002", "loading 13s"},
			{"catalog: 5 models on 2 hives, 2 failing or unavailable"},
			{"mistral-7b", "failed 2x"},
			{"phi-3", "cannot start"},
		} {
			if !testutil.HasLineWith(lines, w) {
				t.Errorf("%dx%d: no line with all of %q in\n%s", size[0], size[1], w, strings.Join(lines, "\n"))
			}
		}
		if size[0] >= 160 && !testutil.HasLineWith(lines, []string{"failed 2x, 1m06s ago: CUDA out of memory | engine exited"}) {
			t.Errorf("%dx%d: the failure's reason is missing:\n%s", size[0], size[1], strings.Join(lines, "\n"))
		}
		if testutil.HasLineWith(lines, []string{"llama-8b", "9.1 GiB learned"}) {
			t.Errorf("%dx%d: a catalog entry that is fine is listed:\n%s", size[0], size[1], strings.Join(lines, "\n"))
		}
	}
	// A hive silent past the TTL takes its models sections along.
	later := statusNow.Add(time.Minute)
	lines := TopLines(st, TopScreen{Addr: "a", Now: later})
	for _, w := range [][]string{{"models/30002"}, {"catalog:"}, {"* simulated GPUs"}} {
		if testutil.HasLineWith(lines, w) {
			t.Errorf("silent hives: a line with %q in\n%s", w, strings.Join(lines, "\n"))
		}
	}
}
