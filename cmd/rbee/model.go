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
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/internal/termview"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/modeldir"
	"github.com/rbee/rbee/node/hive/pull"
)

func modelCommand() *cli.Command {
	hiveFlag := &cli.StringFlag{Name: "hive", Usage: "the hive to act on (a member's name; default: the node at --http-addr)"}
	return &cli.Command{
		Name:  "model",
		Usage: "pull, copy, list and remove the model files of the cluster's hives",
		Subcommands: []*cli.Command{{
			Name:      "pull",
			Usage:     "download a model from a Hugging Face hub or a URL into a hive's --models-dir",
			ArgsUsage: "REF",
			Description: "REF is hf:ORG/REPO (its safetensors folder for vLLM, or its one GGUF),\n" +
				"hf:ORG/REPO:TAG (the GGUF tagged, e.g. Q4_K_M), hf:ORG/REPO/FILE.gguf, with @REVISION\n" +
				"after any of them, or an https:// URL of a .gguf file. The hive downloads it into a\n" +
				".part beside the target, checks the hub's SHA-256, then renames it: the catalog\n" +
				"never sees half a file, and a pull that broke off resumes where it was when run\n" +
				"again. HF_ENDPOINT (a mirror) and HF_TOKEN are taken from this shell, else from\n" +
				"the node's environment. The hive refuses a pull its disk cannot hold.",
			Flags: append(clientFlags(), hiveFlag,
				&cli.BoolFlag{Name: "all-hives", Usage: "pull on every online hive with a --models-dir, at once"}),
			Action: runModelPull,
		}, {
			Name:      "copy",
			Usage:     "copy a model from the hives that hold it into another hive's --models-dir",
			ArgsUsage: "MODEL",
			Description: "The hive named by --hive (default: the node at --http-addr) fetches MODEL's files\n" +
				"from every online hive whose catalog has them, over the cluster's mutual TLS, in\n" +
				"checked 4 MiB blocks from several hives at once (--transfer-rate on that node bounds\n" +
				"it), then adds MODEL to its catalog as the hive it came from serves it. A copy that\n" +
				"breaks off resumes at the blocks it lacks when run again; the model appears in the\n" +
				"folder only when whole. Progress is a bar on a terminal, lines otherwise.",
			Flags:  append(clientFlags(), hiveFlag),
			Action: runModelCopy,
		}, {
			Name:   "ls",
			Usage:  "list every hive's models: catalog, size on disk, and its --models-dir's free space",
			Flags:  clientFlags(),
			Action: runModelList,
		}, {
			Name:      "rm",
			Usage:     "delete a model of a hive's --models-dir (not one a worker runs)",
			ArgsUsage: "MODEL",
			Flags:     append(clientFlags(), hiveFlag),
			Action:    runModelRemove,
		}},
	}
}

// hiveClients returns clients for the hives named: --hive, every online
// hive with a --models-dir (all), or the node at --http-addr.
func hiveClients(c *cli.Context, all bool) (map[string]*api.Client, error) {
	key, err := loadKey(c)
	if err != nil {
		return nil, err
	}
	addr := httpAddrFlag(c)
	to := c.String("hive")
	if to == "" && !all {
		return map[string]*api.Client{addr: api.NewClient(addr, key)}, nil
	}
	cl := api.NewClient(addr, key)
	v, err := fetchCluster(c.Context, cl, addr)
	cl.Close()
	if err != nil {
		return nil, err
	}
	addrs := map[string]string{}
	for _, m := range v.Members {
		if m.Status == "alive" {
			addrs[m.Name] = m.HTTPAddr
		}
	}
	out := map[string]*api.Client{}
	if !all {
		if addrs[to] == "" {
			return nil, fmt.Errorf("no live member called %s", to)
		}
		return map[string]*api.Client{to: api.NewClient(addrs[to], key)}, nil
	}
	for _, h := range v.Hives {
		if h.Online && h.ModelsDirFreeBytes > 0 && addrs[h.HiveID] != "" {
			out[h.HiveID] = api.NewClient(addrs[h.HiveID], key)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no online hive has a --models-dir")
	}
	return out, nil
}

func runModelPull(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("usage: rbee model pull REF [--hive HIVE | --all-hives]", 2)
	}
	ref := c.Args().First()
	// A REF no hive could read is refused here, before any node is asked.
	if _, err := pull.ParseRef(ref); err != nil {
		return err
	}
	clients, err := hiveClients(c, c.Bool("all-hives"))
	if err != nil {
		return err
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	bars := &barSet{w: c.App.Writer, tty: isTerminal(c.App.Writer)}
	for name, cl := range clients {
		wg.Go(func() {
			defer cl.Close()
			bar := bars.add(name + " " + ref)
			err := runJob(bar, func(line func([]byte)) error {
				return cl.PullModel(c.Context, ref, os.Getenv("HF_ENDPOINT"), os.Getenv("HF_TOKEN"), line)
			})
			if err != nil {
				mu.Lock()
				if len(clients) > 1 {
					err = fmt.Errorf("%s: %w", name, err) // which hive, of several
				}
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func runModelCopy(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("usage: rbee model copy MODEL [--hive HIVE]", 2)
	}
	model := c.Args().First()
	clients, err := hiveClients(c, false)
	if err != nil {
		return err
	}
	for _, cl := range clients {
		defer cl.Close()
		bars := &barSet{w: c.App.Writer, tty: isTerminal(c.App.Writer)}
		if err := runJob(bars.add(model), func(line func([]byte)) error { return cl.CopyModel(c.Context, model, line) }); err != nil {
			return fmt.Errorf("copy %s: %w", model, err)
		}
	}
	return nil
}

// runJob reads a pull's or copy's lines into bar; it fails with the job's
// error.
func runJob(bar *copyBar, do func(line func([]byte)) error) error {
	var failure error
	err := do(func(line []byte) {
		var msg struct {
			Progress *jobProgress `json:"progress"`
			Done     *struct {
				Model, Path, Node string
				Bytes             int64
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
			bar.finish(fmt.Sprintf("%s: %s on %s at %s (%s)", bar.label, msg.Done.Model, msg.Done.Node, msg.Done.Path, modeldir.Size(msg.Done.Bytes)))
		case msg.Error != "":
			failure = errors.New(msg.Error)
		}
	})
	if err == nil {
		err = failure
	}
	if err != nil {
		bar.finish("")
	}
	return err
}

func runModelList(c *cli.Context) error {
	cl, err := newClient(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	v, err := fetchCluster(c.Context, cl, c.String("http-addr"))
	if err != nil {
		return err
	}
	w := c.App.Writer
	for _, h := range v.Hives {
		free := "no --models-dir"
		if h.ModelsDirFreeBytes > 0 {
			free = modeldir.Size(int64(h.ModelsDirFreeBytes)) + " free in --models-dir"
		}
		fmt.Fprintf(w, "%s (%s)\n", h.HiveID, free)
		if len(h.Catalog) == 0 {
			fmt.Fprintln(w, "  no models")
		}
		for _, e := range h.Catalog {
			note := ""
			switch {
			case e.Unavailable != "":
				note = "  cannot start: " + e.Unavailable
			case e.Shared:
				note = "  shared"
			}
			fmt.Fprintf(w, "  %-32s %-12s %10s%s\n", e.Name, e.Engine, modeldir.Size(e.Bytes), note)
		}
	}
	return nil
}

func runModelRemove(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("usage: rbee model rm MODEL [--hive HIVE]", 2)
	}
	clients, err := hiveClients(c, false)
	if err != nil {
		return err
	}
	for name, cl := range clients {
		defer cl.Close()
		if err := cl.RemoveModel(c.Context, c.Args().First()); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "removed %s from %s\n", c.Args().First(), name)
	}
	return nil
}

// jobProgress is a pull's or a copy's progress line.
type jobProgress struct {
	File        string
	Done, Total int64
	Rate        float64
	Peers       int
}

func isTerminal(w io.Writer) bool {
	_, ok := termview.TerminalOf(w)
	return ok
}

// barSet draws the bars of jobs running at once, one line each.
type barSet struct {
	w   io.Writer
	tty bool
	mu  sync.Mutex
}

func (s *barSet) add(label string) *copyBar { return &copyBar{set: s, label: label} }

// copyBar shows a job's progress: one line redrawn in place on a
// terminal, a plain line every few seconds otherwise. Jobs at once share
// the line on a terminal, each drawing its own in turn.
type copyBar struct {
	set   *barSet
	label string
	last  time.Time
	drawn bool
}

func (b *copyBar) update(p jobProgress) {
	b.set.mu.Lock()
	defer b.set.mu.Unlock()
	now := time.Now()
	if !b.set.tty && now.Sub(b.last) < 5*time.Second && p.Done < p.Total {
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
	line := fmt.Sprintf("%s %5.1f%% %s/%s %s/s eta %s", b.label, pct, modeldir.Size(p.Done), modeldir.Size(p.Total), modeldir.Size(int64(p.Rate)), eta)
	if p.Peers > 0 {
		line += fmt.Sprintf(" from %d hive(s)", p.Peers)
	}
	if b.set.tty {
		const width = 24
		filled := min(int(pct/100*width), width)
		fmt.Fprintf(b.set.w, "\r\033[K[%s%s] %s", strings.Repeat("#", filled), strings.Repeat(" ", width-filled), line)
		b.drawn = true
		return
	}
	fmt.Fprintln(b.set.w, line)
}

func (b *copyBar) finish(msg string) {
	b.set.mu.Lock()
	defer b.set.mu.Unlock()
	if b.drawn {
		fmt.Fprint(b.set.w, "\r\033[K")
	}
	if msg != "" {
		fmt.Fprintln(b.set.w, msg)
	}
}
