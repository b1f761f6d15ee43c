package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/node/hive/models"
	"github.com/rbee/rbee/node/hive/telemetry"
	"github.com/rbee/rbee/wsapi"
)

// modelFlags are what a hive can start on demand.
func modelFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "model", EnvVars: []string{"RBEE_MODEL"},
			Usage: "a model this hive can start: NAME=PATH[,engine=E][,slots=N][,ctx=N][,vram=MiB][,max_replicas=N][,load_ms=N][,args=...] (repeat; env: separate with ;; args= takes the rest)"},
		&cli.StringFlag{Name: "models-dir", EnvVars: []string{"RBEE_MODELS_DIR"},
			Usage: "a folder of models this hive can start: every *.gguf (llama-server) and every folder with config.json and *.safetensors (vllm)"},
		&cli.BoolFlag{Name: "share-models", EnvVars: []string{"RBEE_SHARE_MODELS"},
			Usage: "let other hives copy any model of this hive's catalog (--model ...,share=true for one) to start it where this hive has no room"},
		&cli.StringSliceFlag{Name: "engine", EnvVars: []string{"RBEE_ENGINE"},
			Usage: "NAME=BINARY points a built-in engine (llama-server, vllm, ollama, sim) at a binary; NAME='TEMPLATE' defines one, with {path} {port} {slots} {ctx} {name} {host} (repeat; env: separate with newlines)"},
		&cli.StringFlag{Name: "sim-gpus", EnvVars: []string{"RBEE_SIM_GPUS"},
			Usage: "simulated GPUs for placement on a machine without one, e.g. 2x24GiB (their used VRAM is the sum of the simulated workers placed on them)"},
		&cli.DurationFlag{Name: "idle-unload", EnvVars: []string{"RBEE_IDLE_UNLOAD"}, Value: models.DefaultIdleUnload,
			Usage: "stop a worker rbee started after it served nothing this long"},
		&cli.DurationFlag{Name: "load-timeout", EnvVars: []string{"RBEE_LOAD_TIMEOUT"}, Value: models.DefaultLoadTimeout,
			Usage: "a worker rbee starts that is not ready within this long has failed"},
		&cli.DurationFlag{Name: "stable-after", EnvVars: []string{"RBEE_STABLE_AFTER"}, Value: models.DefaultStableAfter,
			Usage: "a worker rbee started that was ready this long and then crashed is restarted at once; one that crashes sooner is a failed start, backed off"},
	}
}

// modelsConfig builds a hive's lifecycle from the flags; nil when it has no
// catalog. An entry that cannot start is kept (and reported with why); a
// flag that cannot be read is an error.
func modelsConfig(c *cli.Context, devices func() []wsapi.GPUInfo, log *slog.Logger) (*models.Config, error) {
	var entries []models.Entry
	// args= may hold ';': only RBEE_MODEL is a list.
	for _, one := range flagValues(c, "model", "RBEE_MODEL", ";") {
		e, err := models.ParseModelFlag(one)
		if err != nil {
			return nil, fmt.Errorf("--model: %w", err)
		}
		entries = append(entries, e)
	}
	if dir := c.String("models-dir"); dir != "" {
		found, err := models.ScanModelsDir(dir)
		if err != nil {
			return nil, fmt.Errorf("--models-dir: %w", err)
		}
		if len(found) == 0 {
			log.Warn("--models-dir holds no model (*.gguf, or a folder with config.json and *.safetensors)", "dir", dir)
		}
		for _, e := range found {
			if slicesContainsName(entries, e.Name) {
				log.Info("--model names a model --models-dir has too; the --model entry stands", "model", e.Name)
				continue
			}
			entries = append(entries, e)
		}
	}
	engines := models.BuiltinEngines()
	// A template may hold ';' (sh -c "a; b"): several engines in
	// RBEE_ENGINE are separated by newlines.
	for _, one := range flagValues(c, "engine", "RBEE_ENGINE", "\n") {
		if err := models.ParseEngineFlag(one, engines); err != nil {
			return nil, fmt.Errorf("--engine: %w", err)
		}
	}
	if len(entries) == 0 && c.String("models-dir") == "" {
		if c.IsSet("engine") || c.IsSet("sim-gpus") {
			log.Warn("--engine or --sim-gpus without --model or --models-dir: this hive can start nothing")
		}
		return nil, nil
	}
	self, err := os.Executable()
	if err != nil {
		self = ""
	}
	models.ResolveEngines(engines, self)
	cfg := &models.Config{Entries: entries, Engines: engines, ModelsDir: c.String("models-dir"), ShareAll: c.Bool("share-models"), IdleUnload: c.Duration("idle-unload"),
		LoadTimeout: c.Duration("load-timeout"), StableAfter: c.Duration("stable-after"), CgroupRoot: cgroupRootForStarts(c.String("cgroup-root")), GPUs: devices}
	if s := c.String("sim-gpus"); s != "" {
		if cfg.SimGPUs, err = models.ParseSimGPUs(s); err != nil {
			return nil, err
		}
	}
	// Without --data-dir, each node's engine logs have their own folder:
	// pruning one node's old logs must not delete another's.
	cfg.LogDir = filepath.Join(os.TempDir(), "rbee-engines", c.String("name"))
	if dd := c.String("data-dir"); dd != "" {
		cfg.LogDir = filepath.Join(dd, "engines")
		cfg.StateFile = filepath.Join(dd, "models.json")
		cfg.DigestFile = filepath.Join(dd, "model-digests.json")
		cfg.OllamaModels = filepath.Join(dd, "ollama")
	}
	return cfg, nil
}

// flagValues are a repeatable flag's values: each flag given is one value,
// and the environment variable env, which holds one string, is a list
// separated by sep. Blank values are dropped.
func flagValues(c *cli.Context, name, env, sep string) []string {
	var out []string
	for _, v := range c.StringSlice(name) {
		parts := []string{v}
		if e := os.Getenv(env); e != "" && v == e {
			parts = strings.Split(v, sep)
		}
		for _, p := range parts {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func slicesContainsName(es []models.Entry, name string) bool {
	for _, e := range es {
		if e.Name == name {
			return true
		}
	}
	return false
}

// cgroupRootForStarts is where started workers get their cgroup: the
// --cgroup-root the collector reads, found the same way when not given.
func cgroupRootForStarts(flag string) string {
	if flag == "none" {
		return ""
	}
	if flag != "" {
		return flag
	}
	root, err := telemetry.FindCgroupRoot()
	if err != nil {
		return ""
	}
	return root
}
