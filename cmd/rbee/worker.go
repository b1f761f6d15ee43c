package main

import (
	"context"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/launch"
	"github.com/rbee/rbee/node/hive/telemetry"
)

func workerCommand() *cli.Command {
	return &cli.Command{
		Name:  "worker",
		Usage: "start an inference worker where the hive can see it",
		Subcommands: []*cli.Command{{
			Name:      "run",
			Usage:     "run a worker in its cgroup, rbee.slice/GROUP/INSTANCE, and tell the local node about it",
			ArgsUsage: "-- COMMAND [ARGS...]",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "group", Value: "llm", Usage: "worker group (the cgroup under rbee.slice)"},
				&cli.StringFlag{Name: "instance", Required: true, Usage: "worker instance, usually its port (required)"},
				&cli.StringFlag{Name: "model", Usage: "model it serves, if the hive cannot tell from its API or command line"},
				&cli.IntFlag{Name: "slots", Usage: "requests it serves at once", DefaultText: "from its API, else 1"},
				&cli.StringFlag{Name: "cgroup-root", EnvVars: []string{"RBEE_CGROUP_ROOT"}, Usage: "cgroup v2 mount (default: found in /proc/self/mountinfo)"},
			}, clientFlags()...),
			Action: runWorker,
		}, simulateCommand()},
	}
}

func runWorker(c *cli.Context) error {
	log, err := newLogger("info", "text")
	if err != nil {
		return err
	}
	argv := c.Args().Slice()
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	root := c.String("cgroup-root")
	if root == "" {
		// No cgroup v2: launch says so and runs the worker outside one.
		root, _ = telemetry.FindCgroupRoot()
	}
	cl, err := newClient(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	reg := api.WorkerRegistration{Group: c.String("group"), Instance: c.String("instance"), Model: c.String("model"), Slots: c.Int("slots")}
	ctx, stop := context.WithCancel(c.Context)
	defer stop()
	return launch.Run(ctx, launch.Config{
		CgroupRoot: root,
		Group:      reg.Group,
		Instance:   reg.Instance,
		Argv:       argv,
		Logger:     log,
		Started: func(pid int, inCgroup bool) {
			// Registration carries the model and slots the user named, and,
			// outside a cgroup, is the only way the hive learns the pid. The
			// worker runs whether or not a node answers.
			reg.PID = int32(pid)
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if err := cl.RegisterWorker(rctx, reg); err != nil {
				if !inCgroup {
					log.Warn("worker runs outside a cgroup and the node did not take its registration: the hive will not report it", "err", err)
				} else {
					log.Info("node did not take the registration; the hive still sees the worker's cgroup", "err", err)
				}
			}
		},
	})
}

// exitCode maps a worker's exit to ours, so scripts and supervisors see the
// worker's own status.
func exitCode(err error) (int, bool) {
	if ee, ok := err.(launch.ExitError); ok {
		return ee.Code, true
	}
	return 0, false
}
