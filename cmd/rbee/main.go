// Command rbee runs and talks to rbee nodes. It is a thin layer: flags and
// environment variables become a node.Config, everything else lives in the
// packages.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

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
	return &cli.App{
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
		},
	}
}

// signalContext is cancelled on the first SIGINT or SIGTERM (graceful: the
// node leaves the cluster); a second signal exits at once.
func signalContext(log *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case s := <-ch:
			log.Info("signal received, leaving the cluster", "signal", s.String())
			cancel()
		case <-ctx.Done():
			return
		}
		<-ch
		log.Warn("second signal, exiting now")
		os.Exit(1)
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel()
	}
}

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
