package main

// `rbee model`: what the cluster's hives hold on disk. `copy` moves a model
// a hive has to another hive's --models-dir over the cluster's TLS.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/transfer"
)

func modelCommand() *cli.Command {
	return &cli.Command{
		Name:  "model",
		Usage: "move model files between the cluster's hives",
		Subcommands: []*cli.Command{{
			Name:      "copy",
			Usage:     "copy a model from the hives that hold it into another hive's --models-dir",
			ArgsUsage: "MODEL",
			Description: "The hive named by --to (default: the node at --http-addr) fetches MODEL's files\n" +
				"from every online hive whose catalog has them, over the cluster's mutual TLS, in\n" +
				"checked 4 MiB blocks from several hives at once (--transfer-rate on that node bounds\n" +
				"it), then adds MODEL to its catalog as the hive it came from serves it. A copy that\n" +
				"breaks off resumes at the blocks it lacks when run again; the model appears in the\n" +
				"folder only when whole. Progress is a bar on a terminal, lines otherwise.",
			Flags:  append(clientFlags(), &cli.StringFlag{Name: "to", Usage: "the hive to copy to (a member's name)"}),
			Action: runModelCopy,
		}},
	}
}

func runModelCopy(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("usage: rbee model copy MODEL [--to HIVE]", 2)
	}
	model := c.Args().First()
	key, err := loadKey(c)
	if err != nil {
		return err
	}
	addr := httpAddrFlag(c)
	if to := c.String("to"); to != "" {
		cl := api.NewClient(addr, key)
		v, err := fetchCluster(c.Context, cl, addr)
		cl.Close()
		if err != nil {
			return err
		}
		addr = ""
		for _, m := range v.Members {
			if m.Name == to && m.Status == "alive" {
				addr = m.HTTPAddr
			}
		}
		if addr == "" {
			return fmt.Errorf("no live member called %s", to)
		}
	}
	cl := api.NewClient(addr, key)
	defer cl.Close()
	bar := newCopyBar(c.App.Writer, model)
	var failure error
	err = cl.CopyModel(c.Context, model, func(line []byte) {
		var msg struct {
			Progress *transfer.Progress `json:"progress"`
			Done     *struct {
				Path, Node       string
				Bytes, Refetched int64
			} `json:"done"`
			Error string `json:"error"`
		}
		if json.Unmarshal(line, &msg) != nil {
			return
		}
		switch {
		case msg.Progress != nil:
			bar.update(*msg.Progress)
		case msg.Done != nil:
			bar.finish(fmt.Sprintf("%s: copied to %s as %s (%s)", model, msg.Done.Node, msg.Done.Path, bytesText(msg.Done.Bytes)))
		case msg.Error != "":
			failure = errors.New(msg.Error)
		}
	})
	if err == nil {
		err = failure
	}
	if err != nil {
		bar.finish("")
		return fmt.Errorf("copy %s: %w", model, err)
	}
	return nil
}

// copyBar shows a copy's progress: one line redrawn in place on a
// terminal, a plain line every few seconds otherwise.
type copyBar struct {
	w     io.Writer
	model string
	tty   bool
	last  time.Time
	drawn bool
}

func newCopyBar(w io.Writer, model string) *copyBar {
	f, ok := w.(*os.File)
	return &copyBar{w: w, model: model, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (b *copyBar) update(p transfer.Progress) {
	now := time.Now()
	if !b.tty && now.Sub(b.last) < 5*time.Second && p.Done < p.Total {
		return
	}
	b.last = now
	pct := 0.0
	if p.Total > 0 {
		pct = 100 * float64(p.Done) / float64(p.Total)
	}
	eta := "-"
	if p.Rate > 0 {
		eta = (time.Duration(float64(p.Total-p.Done)/p.Rate) * time.Second).Round(time.Second).String()
	}
	line := fmt.Sprintf("%s %5.1f%% %s/%s %s/s eta %s from %d hive(s)", b.model, pct, bytesText(p.Done), bytesText(p.Total),
		bytesText(int64(p.Rate)), eta, p.Peers)
	if b.tty {
		const width = 24
		filled := int(pct / 100 * width)
		line = "[" + strings.Repeat("#", filled) + strings.Repeat(" ", width-filled) + "] " + line
		fmt.Fprintf(b.w, "\r\033[K%s", line)
		b.drawn = true
		return
	}
	fmt.Fprintln(b.w, line)
}

func (b *copyBar) finish(msg string) {
	if b.drawn {
		fmt.Fprint(b.w, "\r\033[K")
	}
	if msg != "" {
		fmt.Fprintln(b.w, msg)
	}
}

// bytesText writes a byte count in binary units.
func bytesText(n int64) string {
	const unit = 1 << 10
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
