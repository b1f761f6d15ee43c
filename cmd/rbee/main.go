// Command rbee runs and talks to rbee nodes.
//
// For `node run` it is flag parsing and wiring only: flags, environment
// variables and the configuration file (config.go) become a node.Config and
// a Collector (node.go, models.go, collector.go, gpu_*.go), and the node's
// logic (membership, election, scheduling, the proxy, telemetry) lives in
// the packages. args.go lets flags follow positional arguments. The rest of
// this package is the CLI's own code:
//
//   - the views: `status` and `usage` fetch a document and print it as JSON
//     or through internal/termview, which draws the tables (status.go,
//     usage.go); `top` keeps the view live on the terminal, reading the
//     node's feed and following the cluster when its node dies (top.go);
//   - `demo`, a whole cluster of child processes on loopback, started,
//     watched and stopped through internal/launcher (demo.go);
//   - the worker front ends: `worker run` starts a worker in its cgroup
//     through node/hive/launch and registers it with the local node (worker.go);
//     `worker simulate` serves internal/sim's simulated worker (simulate.go);
//   - `keygen`, `token` and the node's client subcommands (keygen.go, node.go).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/node"
)

func main() {
	app := newApp()
	if err := app.Run(interspersed(app, os.Args)); err != nil {
		if code, ok := exitCode(err); ok {
			os.Exit(code)
		}
		fmt.Fprintln(os.Stderr, "rbee:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	app := &cli.App{
		Name:    "rbee",
		Usage:   "turn the GPU machines you own into one LLM-inference cluster",
		Version: node.Version,
		// --worker values hold commas (URL,model=X,slots=N); list flags
		// that take comma lists (--join, --roles) split them themselves.
		DisableSliceFlagSeparator: true,
		Commands: []*cli.Command{
			nodeCommand(),
			workerCommand(),
			keygenCommand(),
			demoCommand(),
			tokenCommand(),
			statusCommand(), topCommand(),
			usageCommand(),
			modelCommand(),
		},
	}
	// `rbee help node` shows a group's subcommands, as `rbee node --help`
	// does (urfave/cli's own command template lists none).
	for _, c := range app.Commands {
		if len(c.Subcommands) > 0 && c.CustomHelpTemplate == "" {
			c.CustomHelpTemplate = groupHelpTemplate
		}
	}
	return app
}

// groupHelpTemplate lists a command group's subcommands from the group
// itself: `rbee help node` renders it before the group is set up, when
// urfave/cli's own template finds no categories to list.
const groupHelpTemplate = `NAME:
   rbee {{.Name}} - {{.Usage}}

USAGE:
   rbee {{.Name}} command [command options]

COMMANDS:{{range .Subcommands}}{{if not .Hidden}}
   {{join .Names ", "}}{{"\t"}}{{.Usage}}{{end}}{{end}}

Run 'rbee {{.Name}} command --help' for a command's options.
`

// signalContext is cancelled on the first SIGINT or SIGTERM (graceful: the
// node leaves the cluster); a second signal exits at once. A second signal
// within dupSignalWindow of the first is the same Ctrl-C delivered twice
// (`go run` forwards the terminal's SIGINT to a child that also got it) and
// is ignored.
func signalContext(log *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		var first time.Time
		select {
		case s := <-ch:
			first = time.Now()
			log.Info("signal received, stopping gracefully", "signal", s.String())
			cancel()
		case <-ctx.Done():
			return
		}
		for range ch {
			if time.Since(first) < dupSignalWindow {
				continue
			}
			log.Warn("second signal, exiting now")
			os.Exit(1)
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel()
	}
}

// dupSignalWindow: signals closer together than this are one signal, twice
// delivered; no person presses Ctrl-C twice that fast.
const dupSignalWindow = 250 * time.Millisecond

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}
