package termview

// The model lifecycle in `rbee status` and `rbee top`: the queue table's
// lifecycle columns, and the sections for the workers rbee started, the GPUs
// and the catalogs, from each hive of /v1/cluster (see api.HiveView).

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// hasLifecycle says whether a queue list carries the model lifecycle's
// fields: a queen from before it sends none, and the table stays as it was.
func hasLifecycle(qs []wsapi.QueueStats) bool {
	return slices.ContainsFunc(qs, func(q wsapi.QueueStats) bool {
		return q.State != "" || q.Reason != "" || q.LoadingHive != "" || q.ETAMS > 0
	})
}

// lifecycleQueueColumns: the note (where a model loads, why it cannot)
// is shortened first, then the model.
var lifecycleQueueColumns = []column{
	{name: "MODEL", shorten: 2}, {name: "STATE"}, {name: "WAITING"}, {name: "LEASES"}, {name: "SLOTS"},
	{name: "WAIT"}, {name: "NOTE", shorten: 1},
}

func lifecycleQueueRow(q wsapi.QueueStats) []string {
	return []string{q.Model, cmp.Or(q.State, "-"), strconv.Itoa(q.Waiting), strconv.Itoa(q.Leases), strconv.Itoa(q.Slots),
		etaText(q.ETAMS), queueNote(q)}
}

// queueNote says where a model is loading, why it cannot be served, or
// where it could start.
func queueNote(q wsapi.QueueStats) string {
	switch {
	case q.LoadingHive != "":
		return fmt.Sprintf("loading on %s %s", q.LoadingHive, formatMS(q.LoadingMS))
	case q.State == "unavailable":
		return cmp.Or(oneLine(q.Reason), "no hive can start it")
	case q.Reason != "":
		return oneLine(q.Reason)
	case q.State == "available" && len(q.Hives) > 0:
		return "can start on " + strings.Join(q.Hives, ", ")
	}
	return ""
}

// etaText is an expected wait: "~4.2s", "~1m05s"; "-" for none or unknown.
func etaText(ms int64) string {
	if ms <= 0 {
		return "-"
	}
	return "~" + secondsText(ms)
}

// secondsText prints a duration in ms with a tenth of a second below a
// minute ("4.2s"), else as formatUptime does.
func secondsText(ms int64) string {
	if ms < 60_000 {
		return fmt.Sprintf("%.1fs", float64(max(ms, 0))/1000)
	}
	return formatUptime(uint64(ms / 1000))
}

// formatMS prints a duration in ms to the second, as formatUptime does.
func formatMS(ms int64) string { return formatUptime(uint64(max(ms, 0) / 1000)) }

// formatGiB prints a size in bytes in GiB.
func formatGiB(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// oneLine joins the lines of a text (an engine's last output lines) with
// " | ", so that it fits a table row.
func oneLine(s string) string {
	var parts []string
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " | ")
}

// modelHives is the online hives of v in id order: an offline hive's
// lifecycle is what it was doing when it went silent, not news.
func modelHives(v *api.ClusterView) []*api.HiveView {
	var out []*api.HiveView
	for i := range v.Hives {
		if h := &v.Hives[i]; h.Online {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b *api.HiveView) int { return strings.Compare(a.HiveID, b.HiveID) })
	return out
}

// modelBlocks are the model lifecycle's sections: the workers rbee started,
// the GPUs and the catalogs; each only when some online hive reported one.
func modelBlocks(v *api.ClusterView, now time.Time, opts StatusOptions) []statusBlock {
	hs := modelHives(v)
	var bs []statusBlock
	if b, ok := managedBlock(hs, now, opts.Width); ok {
		bs = append(bs, b)
	}
	if b, ok := gpusBlock(hs, opts.Width); ok {
		bs = append(bs, b)
	}
	if b, ok := catalogBlock(hs, now, opts); ok {
		bs = append(bs, b)
	}
	return bs
}

var managedColumns = []column{
	{name: "HIVE", shorten: 1, middle: true}, {name: "MANAGED", shorten: 1, middle: true}, {name: "STATE"},
	{name: "LEASES"}, {name: "GPUS", drop: 2}, {name: "VRAM", drop: 3}, {name: "STARTED BY", drop: 1}, {name: "MODEL", shorten: 2},
}

// managedBlock lists the workers rbee started: a loading one with how
// long it has been loading.
func managedBlock(hs []*api.HiveView, now time.Time, width int) (statusBlock, bool) {
	var rows [][]string
	for _, h := range hs {
		ms := slices.Clone(h.Managed)
		slices.SortFunc(ms, func(a, b wsapi.ManagedWorker) int { return compareInstance(a.Instance, b.Instance) })
		for _, m := range ms {
			rows = append(rows, []string{h.HiveID, m.ID(), managedState(m, now), strconv.Itoa(m.Leases), intsText(m.GPUs),
				formatMiB(m.VRAMMB), cmp.Or(m.StartedBy, "-"), m.Model})
		}
	}
	if len(rows) == 0 {
		return statusBlock{}, false
	}
	lines := table{cols: managedColumns, rows: rows}.lines(width)
	return statusBlock{head: lines[:1], rows: lines[1:], noun: "workers", weight: 1}, true
}

// managedState is a managed worker's state, a loading one with its time so
// far ("loading 12s"), or its stage while it waits for its model's files
// ("copying 43% of 4.1 GiB at 1.1 GiB/s, eta 12s").
func managedState(m wsapi.ManagedWorker, now time.Time) string {
	if m.State == wsapi.ManagedLoading && m.Stage != "" {
		return termSafe(m.Stage)
	}
	if m.State == wsapi.ManagedLoading && !m.Since.IsZero() {
		return m.State + " " + formatUptime(uint64(max(now.Sub(m.Since), 0)/time.Second))
	}
	return cmp.Or(m.State, stateUnknown)
}

func intsText(xs []int) string {
	if len(xs) == 0 {
		return "-"
	}
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

var gpuColumns = []column{
	{name: "HIVE", shorten: 1, middle: true}, {name: "GPU"}, {name: "VRAM"}, {name: "UTIL%"},
	{name: "RESERVED", drop: 1}, {name: "NAME", shorten: 2},
}

// gpusBlock lists each hive's GPUs; simulated figures are marked *.
func gpusBlock(hs []*api.HiveView, width int) (statusBlock, bool) {
	var rows [][]string
	sim := false
	for _, h := range hs {
		for _, g := range h.GPUs {
			mark := ""
			if g.Simulated {
				mark, sim = "*", true
			}
			reserved := "-"
			if g.ReservedMB > 0 {
				reserved = formatMiB(g.ReservedMB)
			}
			rows = append(rows, []string{h.HiveID, strconv.Itoa(g.Index), formatVRAM(g.UsedVRAMMB, g.TotalVRAMMB) + mark,
				fmt.Sprintf("%.0f%s", g.UtilPct, mark), reserved, g.Name})
		}
	}
	if len(rows) == 0 {
		return statusBlock{}, false
	}
	lines := table{cols: gpuColumns, rows: rows}.lines(width)
	b := statusBlock{head: lines[:1], rows: lines[1:], noun: "gpus", weight: 1}
	if sim {
		b.tail = []string{"* simulated GPUs (--sim-gpus): used VRAM is what the simulated workers on them hold"}
	}
	return b, true
}

var catalogColumns = []column{
	{name: "HIVE", shorten: 1, middle: true}, {name: "CATALOG", shorten: 2}, {name: "ENGINE", drop: 2},
	{name: "MODEL", drop: 1}, {name: "SIZE", drop: 3}, {name: "SLOTS", drop: 4}, {name: "VRAM NEED"}, {name: "LOAD", drop: 1},
	{name: "STATUS", shorten: 1},
}

// catalogBlock lists what each hive can start, with why an entry cannot or
// failed. Compact (`rbee top`) keeps only the entries that need a look,
// and counts the rest.
func catalogBlock(hs []*api.HiveView, now time.Time, opts StatusOptions) (statusBlock, bool) {
	var rows [][]string
	total, hives := 0, 0
	for _, h := range hs {
		if len(h.Catalog) > 0 {
			hives++
		}
		cs := slices.Clone(h.Catalog)
		slices.SortFunc(cs, func(a, b wsapi.CatalogEntry) int { return strings.Compare(a.Name, b.Name) })
		for _, c := range cs {
			total++
			if opts.Compact && c.Unavailable == "" && c.Failures == 0 {
				continue
			}
			vram := formatMiB(c.VRAMMB)
			if c.VRAMSource != "" {
				vram += " " + c.VRAMSource
			}
			load := "-"
			if c.LoadMS > 0 {
				load = secondsText(c.LoadMS)
			}
			rows = append(rows, []string{h.HiveID, c.Name, c.Engine, factsText(c.Facts), formatGiB(c.Bytes), strconv.Itoa(c.Slots), vram, load,
				catalogStatus(c, now)})
		}
	}
	if total == 0 {
		return statusBlock{}, false
	}
	b := statusBlock{noun: "models", weight: 1}
	if opts.Compact {
		b.head = []string{fmt.Sprintf("catalog: %d models on %d hives, %d failing or unavailable", total, hives, len(rows))}
		if len(rows) == 0 {
			return b, true
		}
	}
	lines := table{cols: catalogColumns, rows: rows}.lines(opts.Width)
	b.head = append(b.head, lines[0])
	b.rows = lines[1:]
	return b, true
}

// factsText is what a model's files say, short: "llama 8.0B Q4_K_M",
// "-" when no parser read them.
func factsText(f *wsapi.ModelFacts) string {
	if f == nil {
		return "-"
	}
	var parts []string
	if f.Architecture != "" {
		parts = append(parts, oneLine(f.Architecture))
	}
	switch p := float64(f.Parameters); {
	case p >= 1e9:
		parts = append(parts, fmt.Sprintf("%.1fB", p/1e9))
	case p >= 1e6:
		parts = append(parts, fmt.Sprintf("%.0fM", p/1e6))
	case p > 0:
		parts = append(parts, fmt.Sprintf("%.0fK", p/1e3))
	}
	if f.Quantization != "" {
		parts = append(parts, oneLine(f.Quantization))
	}
	if len(parts) == 0 {
		return f.Format
	}
	return strings.Join(parts, " ")
}

// catalogStatus says whether an entry can start: "cannot start: ...",
// "failed 2x, 1m05s ago: ...", "simulated", or "ok".
func catalogStatus(c wsapi.CatalogEntry, now time.Time) string {
	var parts []string
	if c.Unavailable != "" {
		parts = append(parts, "cannot start: "+oneLine(c.Unavailable))
	}
	if c.Failures > 0 {
		f := fmt.Sprintf("failed %dx", c.Failures)
		if !c.FailedAt.IsZero() {
			f += ", " + sinceText(now, c.FailedAt)
		}
		if c.FailReason != "" {
			f += ": " + oneLine(c.FailReason)
		}
		parts = append(parts, f)
	}
	if c.Simulated {
		parts = append(parts, "simulated")
	}
	if len(parts) == 0 {
		return "ok"
	}
	return strings.Join(parts, "; ")
}
