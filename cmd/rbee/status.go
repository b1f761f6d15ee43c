package main

// `rbee status`: the cluster snapshot (/v1/cluster) as tables. Fetching is in
// runStatus; rendering is the pure renderStatus, which `rbee top` draws
// through as well.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// statusTimeout bounds one /v1/cluster call: a node that asks the queen
// gives up on it after 2 s, so 10 s only expires on a node that hangs.
const statusTimeout = 10 * time.Second

// stateUnknown is shown for a worker that came without a state: a queen
// older than the state field. Its state is not worked out here: the rule
// is the queen's (scheduler.State), and a view shows what it sends.
const stateUnknown = "unknown"

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "print the cluster: members, queues and every worker's load, once",
		Description: "Asks the node at --http-addr for /v1/cluster (the node asks the queen for hives\n" +
			"and queues), with each online hive's GPUs, model catalog and the workers rbee\n" +
			"started. GPU figures marked * are simulated (`rbee worker simulate`, --sim-gpus),\n" +
			"not a GPU.\n" +
			"For a live view, see `rbee top`.",
		Flags:  append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print the /v1/cluster document as JSON"}),
		Action: runStatus,
	}
}

func runStatus(c *cli.Context) error {
	cl, err := newClient(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(c.Context, statusTimeout)
	defer cancel()
	v, err := fetchCluster(ctx, cl, c.String("http-addr"))
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return renderStatus(c.App.Writer, v, time.Now(), screenOptions(c.App.Writer))
}

// screenOptions fit one print to where it goes: on a terminal, its width
// and colour (unless NO_COLOR); elsewhere (a pipe, a file) every column and
// no escape codes.
func screenOptions(w io.Writer) statusOptions {
	f, ok := terminalOf(w)
	if !ok {
		return statusOptions{}
	}
	opts := statusOptions{Color: colorWanted(true, os.Getenv("NO_COLOR"))}
	if width, _, err := term.GetSize(int(f.Fd())); err == nil {
		opts.Width = width
	}
	return opts
}

// fetchCluster gets the snapshot, saying what to check when the node is not
// there.
func fetchCluster(ctx context.Context, cl *api.Client, addr string) (*api.ClusterView, error) {
	v, err := cl.Cluster(ctx)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return nil, fmt.Errorf("get cluster status: %w (is `rbee node run` listening there? see --http-addr)", err)
		}
		return nil, fmt.Errorf("get cluster status: %w", err)
	}
	return v, nil
}

// statusOptions shape a rendering; the zero value prints everything, in
// plain text.
type statusOptions struct {
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

// renderStatus writes the cluster as text: a summary line, then the members,
// the queues and the workers. now dates "last report ... ago"; nothing else
// depends on the clock.
func renderStatus(w io.Writer, v *api.ClusterView, now time.Time, opts statusOptions) error {
	var b strings.Builder
	for _, l := range statusLines(v, now, opts) {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// statusLines is renderStatus's output, one string a line.
func statusLines(v *api.ClusterView, now time.Time, opts statusOptions) []string {
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

func statusBlocks(v *api.ClusterView, now time.Time, opts statusOptions) []statusBlock {
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

func workersBlock(v *api.ClusterView, ws []workerRow, now time.Time, opts statusOptions) statusBlock {
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

// formatMiB prints a size in MiB, or in GiB from 1 GiB up.
func formatMiB(mb uint64) string {
	if mb < 1024 {
		return fmt.Sprintf("%d MiB", mb)
	}
	return fmt.Sprintf("%.1f GiB", float64(mb)/1024)
}

// formatVRAM prints used/total in one unit: GiB when either is 1 GiB or
// more, so a 24 GiB card reads "6.0/24.0 GiB".
func formatVRAM(used, total uint64) string {
	if total == 0 {
		return formatMiB(used)
	}
	if used < 1024 && total < 1024 {
		return fmt.Sprintf("%d/%d MiB", used, total)
	}
	return fmt.Sprintf("%.1f/%.1f GiB", float64(used)/1024, float64(total)/1024)
}

// formatUptime prints the two largest units: 45s, 12m05s, 3h04m, 2d03h.
func formatUptime(s uint64) string {
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}

// sinceText says how long before now t was, to the second.
func sinceText(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Truncate(time.Second)
	if d < 0 {
		d = 0
	}
	return formatUptime(uint64(d/time.Second)) + " ago"
}

// termSafe makes text from the network safe to print on a terminal: control
// characters (C0, DEL and C1, which include ESC and CSI) become '?', as do
// tabs and newlines that would break a table, and invalid UTF-8.
func termSafe(s string) string {
	ok := true
	for _, r := range s {
		if isControl(r) || r == utf8.RuneError {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isControl(r) || r == utf8.RuneError {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isControl(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) }

// fitBlocks lays the blocks out, a blank line between two, in at most height
// lines (0: no limit). When the rows do not all fit, the blank lines go
// first, then rows are handed out in turns (see allocRows), and a block cut
// short ends with "+N more" in its last line. If even the fixed lines do not
// fit, the bottom is cut.
func fitBlocks(bs []statusBlock, height int) []string {
	caps := make([]int, len(bs))
	total, fixed := 0, 0
	for i, b := range bs {
		caps[i] = len(b.rows)
		total += len(b.head) + len(b.rows) + len(b.tail)
		fixed += len(b.head) + len(b.tail)
	}
	gap := true
	if height > 0 && total+len(bs)-1 > height {
		gap = false
		allocRows(bs, caps, height-fixed)
	}
	var out []string
	for i, b := range bs {
		if i > 0 && gap {
			out = append(out, "")
		}
		out = append(out, b.head...)
		if caps[i] >= len(b.rows) {
			out = append(out, b.rows...)
		} else if caps[i] > 0 {
			shown := caps[i] - 1
			out = append(out, b.rows[:shown]...)
			out = append(out, fmt.Sprintf("+%d more %s", len(b.rows)-shown, b.noun))
		}
		out = append(out, b.tail...)
	}
	if height > 0 && len(out) > height {
		out = out[:height]
	}
	return out
}

// allocRows lowers caps[i], the rows block i has, to what budget lines
// allow: one line each first, then in turns, each block takes up to its
// weight in rows, the heaviest first.
func allocRows(bs []statusBlock, caps []int, budget int) {
	want := slices.Clone(caps)
	clear(caps)
	order := make([]int, len(bs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(bs[b].weight, bs[a].weight) })
	for round := 0; budget > 0; round++ {
		gave := false
		for _, i := range order {
			// First one line each, so that every block can at
			// least say how many rows it has.
			share := 1
			if round > 0 {
				share = max(bs[i].weight, 1)
			}
			n := min(share, want[i]-caps[i], budget)
			if n > 0 {
				caps[i] += n
				budget -= n
				gave = true
			}
		}
		if !gave {
			return
		}
	}
}
