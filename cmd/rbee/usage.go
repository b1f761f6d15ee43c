package main

// `rbee usage`: the cluster's token usage by API key and model (/v1/usage),
// as JSON or as termview's table.

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/internal/termview"
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
			&cli.DurationFlag{Name: "since", Value: wsapi.UsageWindow, Usage: "how far back to count (at most 24h)"},
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
	return termview.RenderUsage(c.App.Writer, v, screenOptions(c.App.Writer).Width)
}
