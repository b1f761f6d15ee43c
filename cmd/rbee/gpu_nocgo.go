//go:build !cgo

package main

import (
	"log/slog"

	"github.com/rbee/rbee/node/hive/telemetry"
	"github.com/rbee/rbee/wsapi"
)

// newGPU: go-nvml needs cgo, so a build without it reports no GPU figures,
// and says so once.
func newGPU(log *slog.Logger) (func([][]int32) []telemetry.WorkerGPU, func() []wsapi.GPUInfo, func()) {
	log.Warn("no GPU figures: this rbee was built without cgo, which NVIDIA's NVML bindings need")
	return nil, nil, func() {}
}
