package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/node/hive"
	"github.com/rbee/rbee/node/hive/telemetry"
	"github.com/rbee/rbee/wsapi"
)

// newCollector builds the hive's telemetry collector from the flags. A node
// without the hive role reports nothing.
func newCollector(c *cli.Context, log *slog.Logger) (hive.Collector, func() []wsapi.GPUInfo, func(), error) {
	var specs []telemetry.WorkerSpec
	for _, v := range c.StringSlice("worker") {
		// An env var holds one string; workers in it are separated by ';'
		// since their options use ','.
		for _, one := range strings.Split(v, ";") {
			if one = strings.TrimSpace(one); one == "" {
				continue
			}
			w, err := telemetry.ParseWorkerSpec(one)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("--worker: %w", err)
			}
			if w.Fixed != "" {
				log.Warn("--worker: "+w.Fixed, "worker", w.URL)
			}
			specs = append(specs, w)
		}
	}
	tlog := log.With("component", "telemetry")
	gpu, devices, closeGPU := newGPU(tlog)
	coll := telemetry.NewCollector(telemetry.CollectorConfig{
		CgroupRoot: c.String("cgroup-root"),
		Workers:    specs,
		GPU:        gpu,
		// Model: what the user named, else the worker's own API, else
		// its command line.
		FromCmdline: telemetry.CmdlineModel,
		Probe:       telemetry.APIProber{}.ProbeModel,
		Logger:      tlog,
	})
	return coll, devices, closeGPU, nil
}
