package main

// `rbee usage`: the cluster's token usage by API key and model (/v1/usage),
// as a table or JSON. Fetching is in runUsage; rendering is the pure
// renderUsage.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/usage"
	"github.com/rbee/rbee/wsapi"
)

func usageCommand() *cli.Command {
	return &cli.Command{
		Name:  "usage",
		Usage: "print the tokens each API key used per model",
		Description: "Asks the node at --http-addr for /v1/usage (the node asks the queen, which sums\n" +
			"what every entry node counted): requests, prompt and completion tokens as the\n" +
			"workers reported them, and the queue wait's median and 99th percentile\n" +
			"(estimates, within ±41%). --since reaches back at most 24h, in ten-minute steps.",
		Flags: append(clientFlags(),
			&cli.DurationFlag{Name: "since", Value: usage.Window, Usage: "how far back to count (at most 24h)"},
			&cli.BoolFlag{Name: "json", Usage: "print the /v1/usage document as JSON"},
		),
		Action: runUsage,
	}
}

func runUsage(c *cli.Context) error {
	since := c.Duration("since")
	if since <= 0 {
		return fmt.Errorf("--since %s: want a positive duration such as 1h", since)
	}
	cl, err := newClient(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(c.Context, statusTimeout)
	defer cancel()
	v, err := cl.Usage(ctx, since)
	if err != nil {
		return fmt.Errorf("get usage: %w", err)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return renderUsage(c.App.Writer, v, screenOptions(c.App.Writer).Width)
}

var usageColumns = []column{
	{name: "KEY", shorten: 2}, {name: "MODEL", shorten: 1}, {name: "REQUESTS"}, {name: "PROMPT"},
	{name: "COMPLETION"}, {name: "WAIT P50", drop: 2}, {name: "WAIT P99", drop: 1},
}

// renderUsage writes the usage as a table with a total line, fitted to width
// columns (0: no limit).
func renderUsage(w io.Writer, v *api.UsageView, width int) error {
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
			waitText(r.QueueWaitP50MS), waitText(r.QueueWaitP99MS)})
		total.Requests += r.Requests
		total.PromptTokens += r.PromptTokens
		total.CompletionTokens += r.CompletionTokens
	}
	rows = append(rows, []string{"TOTAL", "", itoa(total.Requests), itoa(total.PromptTokens), itoa(total.CompletionTokens), "", ""})
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
