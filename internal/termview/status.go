package termview

// `rbee status`: the cluster snapshot (/v1/cluster) as tables, which `rbee
// top` draws through as well.

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// stateUnknown is shown for a worker that came without a state: a queen
// older than the state field. Its state is not worked out here: the rule
// is the queen's (scheduler.State), and a view shows what it sends.
const stateUnknown = "unknown"

// StatusOptions shape a rendering; the zero value prints everything, in
// plain text.
type StatusOptions struct {
	// Width fits the tables in this many columns: they drop their least
	// useful columns, then shorten cells (see workerColumns); 0 means no
	// limit. Other lines are left whole: `rbee top` cuts its frame.
	Width int
	// Height fits the output in this many lines by eliding table rows
	// (a "+N more" line says how many); 0 means no limit.
	Height int
	// Color paints worker states in ANSI colours (see stateColors).
	Color bool
	// Compact lists only the catalog entries that failed or cannot start,
	// and counts the rest (`rbee top`).
	Compact bool
}

// RenderStatus writes the cluster as text: a summary line, then the members,
// the queues and the workers. now dates "last report ... ago"; nothing else
// depends on the clock.
func RenderStatus(w io.Writer, v *api.ClusterView, now time.Time, opts StatusOptions) error {
	var b strings.Builder
	for _, l := range StatusLines(v, now, opts) {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// StatusLines is RenderStatus's output, one string a line.
func StatusLines(v *api.ClusterView, now time.Time, opts StatusOptions) []string {
	return fitBlocks(statusBlocks(v, now, opts), opts.Height)
}

// statusBlock is one part of the output: fixed lines around rows that may be
// elided to fit a screen.
type statusBlock struct {
	head []string
	rows []string
	tail []string
	// noun names the rows in the "+N more" line.
	noun string
	// weight is the block's share of a screen too short for every row:
	// the workers, what `rbee top` is for, get twice the others'.
	weight int
}

func statusBlocks(v *api.ClusterView, now time.Time, opts StatusOptions) []statusBlock {
	ws := workerRows(v)
	bs := []statusBlock{
		{head: summaryLines(v, ws)},
		membersBlock(v.Members, opts.Width),
		queuesBlock(v.Queues, opts.Width),
		workersBlock(v, ws, now, opts),
	}
	return append(bs, modelBlocks(v, now, opts)...)
}

// workerRow is one worker with what the tables derive from it.
type workerRow struct {
	hive  *api.HiveView
	w     wsapi.ProcessStats
	busy  int // leases on it now
	slots int
	state string // w.State as the queen sent it, or stateUnknown
}

func workerRows(v *api.ClusterView) []workerRow {
	var out []workerRow
	for i := range v.Hives {
		h := &v.Hives[i]
		busy := map[string]int{}
		for _, l := range h.Leases {
			busy[l.Worker]++
		}
		ws := slices.Clone(h.Workers)
		slices.SortFunc(ws, func(a, b wsapi.ProcessStats) int {
			return cmp.Or(strings.Compare(a.Group, b.Group), compareInstance(a.Instance, b.Instance))
		})
		for _, w := range ws {
			r := workerRow{hive: h, w: w, busy: busy[w.ID()], slots: max(w.Slots, 1), state: cmp.Or(w.State, stateUnknown)}
			out = append(out, r)
		}
	}
	return out
}

// compareInstance orders instances that are port numbers numerically.
func compareInstance(a, b string) int {
	x, errA := strconv.Atoi(a)
	y, errB := strconv.Atoi(b)
	if errA == nil && errB == nil {
		return cmp.Compare(x, y)
	}
	return strings.Compare(a, b)
}

func summaryLines(v *api.ClusterView, ws []workerRow) []string {
	alive := 0
	for _, m := range v.Members {
		if m.Status == "alive" {
			alive++
		}
	}
	online := 0
	for _, h := range v.Hives {
		if h.Online {
			online++
		}
	}
	workers, idle := 0, 0
	for _, r := range ws {
		if r.hive.Online && r.state != scheduler.StateOffline {
			workers++
		}
		if r.state == scheduler.StateIdle {
			idle++
		}
	}
	queen := termSafe(v.Queen)
	if queen == "" {
		queen = "(none)"
	}
	hives := fmt.Sprintf("hives %d/%d online", online, len(v.Hives))
	if v.HivesError != "" {
		hives = "hives unknown"
	}
	return []string{
		fmt.Sprintf("queen %s   asked %s   %.1f req/s", queen, termSafe(v.Node), v.RequestsPerS),
		fmt.Sprintf("members %d/%d alive   %s   workers %d online, %d idle", alive, len(v.Members), hives, workers, idle),
	}
}

// memberColumns: a narrow screen loses the version, then the gossip address
// (the CLI talks to the HTTP one).
var memberColumns = []column{
	{name: "MEMBER", shorten: 1, middle: true}, {name: "GOSSIP", drop: 2}, {name: "HTTP"}, {name: "ROLES"},
	{name: "STATUS"}, {name: "QUEEN"}, {name: "VERSION", drop: 1},
}

func membersBlock(ms []api.MemberView, width int) statusBlock {
	rows := make([][]string, 0, len(ms))
	for _, m := range ms {
		q := ""
		if m.Queen {
			q = "*"
		}
		roles := strings.Join(m.Roles, ",")
		if roles == "" {
			roles = "none"
		}
		rows = append(rows, []string{m.Name, m.GossipAddr, m.HTTPAddr, roles, m.Status, q, m.Version})
	}
	lines := table{cols: memberColumns, rows: rows}.lines(width)
	return statusBlock{head: lines[:1], rows: lines[1:], noun: "members", weight: 1}
}

var queueColumns = []column{{name: "MODEL", shorten: 1}, {name: "WAITING"}, {name: "LEASES"}, {name: "SLOTS"}}

func queuesBlock(qs []wsapi.QueueStats, width int) statusBlock {
	if len(qs) == 0 {
		return statusBlock{head: []string{"queues: none (no model has workers or waiting requests)"}}
	}
	qs = slices.Clone(qs)
	slices.SortFunc(qs, func(a, b wsapi.QueueStats) int { return strings.Compare(a.Model, b.Model) })
	cols := queueColumns
	rows := make([][]string, 0, len(qs))
	for _, q := range qs {
		rows = append(rows, []string{q.Model, strconv.Itoa(q.Waiting), strconv.Itoa(q.Leases), strconv.Itoa(q.Slots)})
	}
	if hasLifecycle(qs) {
		cols, rows = lifecycleQueueColumns, rows[:0]
		for _, q := range qs {
			rows = append(rows, lifecycleQueueRow(q))
		}
	}
	lines := table{cols: cols, rows: rows}.lines(width)
	return statusBlock{head: lines[:1], rows: lines[1:], noun: "models", weight: 1}
}

// workerColumns are the worker table's. What a narrow screen keeps longest
// is what `rbee top` is for, whether a worker can take work: its state,
// model, slots, GPU and VRAM. It drops IO first (rarely what limits an
// inference server), then the pid and uptime (there to find the process),
// then CPU and RSS; then it shortens hive and worker names (in the middle:
// their ends tell them apart, gpu-node-01 from gpu-node-02), and the model
// last.
var workerColumns = []column{
	{name: "HIVE", shorten: 1, middle: true},
	{name: "WORKER", shorten: 1, middle: true},
	{name: "STATE"},
	{name: "SLOTS"},
	{name: "GPU%"},
	{name: "VRAM"},
	{name: "CPU%", drop: 4},
	{name: "RSS", drop: 5},
	{name: "IO R/W MB/s", drop: 1},
	{name: "PID", drop: 2},
	{name: "UPTIME", drop: 3},
	{name: "MODEL", shorten: 2},
}

// workerStateColumn is STATE's index in workerColumns.
const workerStateColumn = 2

func workersBlock(v *api.ClusterView, ws []workerRow, now time.Time, opts StatusOptions) statusBlock {
	if v.HivesError != "" {
		return statusBlock{head: []string{"workers: unknown: " + termSafe(v.HivesError)}}
	}
	var rows [][]string
	sim := false
	for _, r := range ws {
		sim = sim || r.w.Simulated
		rows = append(rows, workerCells(r))
	}
	b := statusBlock{noun: "workers", weight: 2}
	if len(rows) == 0 {
		b.head = []string{"workers: none reported (start one with `rbee worker run`, or name one with `rbee node run --worker URL`)"}
	} else {
		t := table{cols: workerColumns, rows: rows}
		if opts.Color {
			t.paint = func(col int, text string) string {
				if col != workerStateColumn {
					return text
				}
				return paintState(text)
			}
		}
		lines := t.lines(opts.Width)
		b.head, b.rows = lines[:1], lines[1:]
	}
	// One line however many: a rack that went dark must not push the
	// table off a screen.
	var off []string
	for _, h := range v.Hives {
		if !h.Online {
			off = append(off, fmt.Sprintf("%s (last report %s)", termSafe(h.HiveID), sinceText(now, h.LastSeen)))
		}
	}
	if len(off) > 0 {
		b.tail = append(b.tail, "offline hives: "+strings.Join(off, ", "))
	}
	// A down worker's cause is on its hive: say it here, so that nobody
	// has to go and read the hive's log.
	var down []string
	for _, r := range ws {
		if r.state == scheduler.StateDown {
			down = append(down, fmt.Sprintf("%s/%s (%s)", termSafe(r.hive.HiveID), termSafe(r.w.ID()), termSafe(r.w.StateReason)))
		}
	}
	if len(down) > 0 {
		b.tail = append(b.tail, "down workers: "+strings.Join(down, ", "))
	}
	var empty []string
	for _, h := range v.Hives {
		if h.Online && len(h.Workers) == 0 {
			empty = append(empty, termSafe(h.HiveID))
		}
	}
	if len(empty) > 0 {
		b.tail = append(b.tail, "hives without workers: "+strings.Join(empty, ", "))
	}
	if sim {
		b.tail = append(b.tail, "* simulated GPU figures (rbee worker simulate), not a real GPU")
	}
	return b
}

func workerCells(r workerRow) []string {
	w := r.w
	model := "unknown"
	if w.Model != nil && *w.Model != "" {
		model = *w.Model
	}
	if len(w.Models) > 1 {
		model = strings.Join(w.Models, ", ")
	}
	if w.Engine != "" {
		model += " (" + w.Engine + ")"
	}
	mark := ""
	if w.Simulated {
		mark = "*"
	}
	gpu, vram := "-", "-"
	if w.TotalVRAMMB > 0 || w.VRAMMB > 0 || w.GPUUtilPct > 0 || w.Simulated {
		gpu = fmt.Sprintf("%.0f%s", w.GPUUtilPct, mark)
		vram = formatVRAM(w.VRAMMB, w.TotalVRAMMB) + mark
	}
	pid := "-"
	if w.PID != 0 {
		pid = strconv.FormatUint(uint64(w.PID), 10)
	}
	return []string{
		r.hive.HiveID,
		w.ID(),
		r.state,
		fmt.Sprintf("%d/%d", r.busy, r.slots),
		gpu,
		vram,
		fmt.Sprintf("%.1f", w.CPUPct),
		formatMiB(w.RSSMB),
		fmt.Sprintf("%.1f/%.1f", w.IOReadMBs, w.IOWriteMBs),
		pid,
		formatUptime(w.UptimeS),
		model,
	}
}
