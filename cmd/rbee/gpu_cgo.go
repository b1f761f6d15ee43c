//go:build cgo

package main

import (
	"log/slog"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/rbee/rbee/node/hive/telemetry"
	"github.com/rbee/rbee/wsapi"
)

// newGPU starts NVML once for the node's life. Without a driver or a GPU it
// says why once (at WARN) and the hive reports zero GPU figures.
func newGPU(log *slog.Logger) (func([][]int32) []telemetry.WorkerGPU, func() []wsapi.GPUInfo, func()) {
	g := telemetry.NewGPU(nvml.New(), log)
	_ = g.Init() // logs its own reason on failure
	return g.Workers, g.Devices, g.Shutdown
}
