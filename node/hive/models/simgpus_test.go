package models

import (
	"testing"

	"github.com/rbee/rbee/wsapi"
)

// A simulated GPU's row is the sum of what the simulated workers on it
// report: those named with --worker sit on the first GPU, one rbee started
// on the GPUs it was placed on; utilization adds up to at most 100%.
// (`rbee demo` showed 0% and 0 of 8 GiB next to workers at 92% of 24 GiB.)
func TestManager_SimGPUsAddUpTheirWorkers(t *testing.T) {
	m, _ := newManager(t, Config{SimGPUs: []wsapi.GPUInfo{{Index: 0, Name: "simulated 24GiB", TotalVRAMMB: 24576, Simulated: true},
		{Index: 1, Name: "simulated 24GiB", TotalVRAMMB: 24576, Simulated: true}}},
		fake("m", "--load-ms", "50"))
	m.Start(&wsapi.ModelStart{StartID: "s1", Model: "m", GPUs: []int{1}, VRAMMB: 3000}, "q")
	w := waitState(t, m, wsapi.ManagedReady)

	static := func(instance string, util float64, vram uint64) wsapi.ProcessStats {
		return wsapi.ProcessStats{Group: "sim", Instance: instance, Simulated: true, GPUUtilPct: util, VRAMMB: vram, TotalVRAMMB: 24576}
	}
	for _, tc := range []struct {
		name        string
		workers     []wsapi.ProcessStats
		used        [2]uint64
		util        [2]float64
		explanation string
	}{
		{"idle", []wsapi.ProcessStats{static("9001", 0, 4096), static("9002", 0, 4096),
			{Group: wsapi.ManagedGroup, Instance: w.Instance, Simulated: true, VRAMMB: 3000, TotalVRAMMB: 24576}},
			[2]uint64{8192, 3000}, [2]float64{0, 0}, "the weights of each"},
		{"busy", []wsapi.ProcessStats{static("9001", 46.5, 4608), static("9002", 30, 4608),
			{Group: wsapi.ManagedGroup, Instance: w.Instance, Simulated: true, GPUUtilPct: 88, VRAMMB: 4024, TotalVRAMMB: 24576}},
			[2]uint64{9216, 4024}, [2]float64{76.5, 88}, "sums of the workers' figures"},
		{"full", []wsapi.ProcessStats{static("9001", 92, 5120), static("9002", 91, 5120),
			{Group: wsapi.ManagedGroup, Instance: w.Instance, Simulated: true, GPUUtilPct: 93, VRAMMB: 4024, TotalVRAMMB: 24576}},
			[2]uint64{10240, 4024}, [2]float64{100, 93}, "utilization at most 100%"},
		{"unread", []wsapi.ProcessStats{static("9001", 0, 0),
			{Group: wsapi.ManagedGroup, Instance: w.Instance, Simulated: true}},
			[2]uint64{0, 3000}, [2]float64{0, 0}, "a managed worker whose figures were not read counts its placement"},
		{"not simulated", []wsapi.ProcessStats{{Group: "ext", Instance: "11434", GPUUtilPct: 70, VRAMMB: 9000, TotalVRAMMB: 81920}},
			[2]uint64{0, 3000}, [2]float64{0, 0}, "a real worker is on no simulated GPU"},
	} {
		_, _, gpus, _ := m.Report(tc.workers)
		if len(gpus) != 2 {
			t.Fatalf("%s: %d GPUs reported, want 2", tc.name, len(gpus))
		}
		for i, g := range gpus {
			if g.UsedVRAMMB != tc.used[i] || g.UtilPct != tc.util[i] || g.TotalVRAMMB != 24576 || !g.Simulated {
				t.Errorf("%s: GPU %d = %d MiB used of %d, %v%% util; want %d MiB, %v%% (%s)", tc.name, i, g.UsedVRAMMB, g.TotalVRAMMB,
					g.UtilPct, tc.used[i], tc.util[i], tc.explanation)
			}
		}
	}
}
