package models

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/rbee/rbee/wsapi"
)

// ParseSimGPUs reads --sim-gpus: a comma-separated list of COUNTxSIZE or
// SIZE, with SIZE in GiB, GB, MiB or MB ("2x24GiB", "80GiB,2x16GiB"). Each
// GPU is marked simulated.
func ParseSimGPUs(s string) ([]wsapi.GPUInfo, error) {
	var out []wsapi.GPUInfo
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		count, size := 1, part
		if n, rest, ok := strings.Cut(part, "x"); ok {
			c, err := strconv.Atoi(n)
			if err != nil || c < 1 || c > wsapi.MaxGPUs {
				return nil, fmt.Errorf("--sim-gpus %q: bad count %q (1 to %d)", s, n, wsapi.MaxGPUs)
			}
			count, size = c, rest
		}
		mb, err := parseMiB(size)
		if err != nil {
			return nil, fmt.Errorf("--sim-gpus %q: %w", s, err)
		}
		for range count {
			out = append(out, wsapi.GPUInfo{Index: len(out), Name: "simulated " + size, TotalVRAMMB: mb, Simulated: true})
		}
	}
	if len(out) == 0 || len(out) > wsapi.MaxGPUs {
		return nil, fmt.Errorf("--sim-gpus %q: want 1 to %d GPUs, e.g. 2x24GiB", s, wsapi.MaxGPUs)
	}
	return out, nil
}

// parseMiB reads a memory size; a bare number is MiB.
func parseMiB(s string) (uint64, error) {
	units := []struct {
		suffix string
		mib    float64
	}{{"GiB", 1024}, {"GB", 1e9 / (1 << 20)}, {"MiB", 1}, {"MB", 1e6 / (1 << 20)}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || v <= 0 || v > 1<<24 {
				return 0, fmt.Errorf("bad size %q (want e.g. 24GiB or 16000MiB)", s)
			}
			return uint64(v * u.mib), nil
		}
	}
	return 0, fmt.Errorf("bad size %q", s)
}
