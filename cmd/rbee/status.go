package main

// `rbee status`: the cluster snapshot (/v1/cluster), fetched here and
// rendered by termview.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/internal/termview"
	"github.com/rbee/rbee/node/api"
)

// statusTimeout bounds one /v1/cluster call: a node that asks the queen
// gives up on it after 2 s, so 10 s only expires on a node that hangs.
const statusTimeout = 10 * time.Second

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
	return termview.RenderStatus(c.App.Writer, v, time.Now(), screenOptions(c.App.Writer))
}

// screenOptions fit one print to where it goes (termview.ScreenOptions),
// with the user's NO_COLOR.
func screenOptions(w io.Writer) termview.StatusOptions {
	return termview.ScreenOptions(w, os.Getenv("NO_COLOR"))
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
