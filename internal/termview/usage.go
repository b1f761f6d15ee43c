package termview

// `rbee usage`: the cluster's token usage by API key and model (/v1/usage)
// as a table.

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

var usageColumns = []column{
	{name: "KEY", shorten: 2}, {name: "MODEL", shorten: 1}, {name: "REQUESTS"}, {name: "PROMPT"},
	{name: "COMPLETION"}, {name: "MIGRATED", drop: 3}, {name: "WAIT P50", drop: 2}, {name: "WAIT P99", drop: 1},
}

// RenderUsage writes the usage as a table with a total line, fitted to width
// columns (0: no limit).
func RenderUsage(w io.Writer, v *api.UsageView, width int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "usage over the last %s (queen %s)\n", time.Duration(v.SinceS)*time.Second, termSafe(v.Queen))
	if len(v.Rows) == 0 {
		b.WriteString("no requests\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	rows := make([][]string, 0, len(v.Rows)+1)
	var total wsapi.UsageRow
	for _, r := range v.Rows {
		rows = append(rows, []string{r.Key, r.Model, itoa(r.Requests), itoa(r.PromptTokens), itoa(r.CompletionTokens),
			itoa(r.Migrated), waitText(r.QueueWaitP50MS), waitText(r.QueueWaitP99MS)})
		total.Requests += r.Requests
		total.PromptTokens += r.PromptTokens
		total.CompletionTokens += r.CompletionTokens
		total.Migrated += r.Migrated
	}
	rows = append(rows, []string{"TOTAL", "", itoa(total.Requests), itoa(total.PromptTokens), itoa(total.CompletionTokens), itoa(total.Migrated), "", ""})
	for _, l := range (table{cols: usageColumns, rows: rows}).lines(width) {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// waitText shows a wait in the unit that suits it.
func waitText(ms float64) string {
	switch {
	case ms < 1:
		return "<1ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
	default:
		return strconv.FormatFloat(ms/1000, 'f', 1, 64) + "s"
	}
}
