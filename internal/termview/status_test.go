package termview

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata/")

// statusNow is the clock of the fixture testdata/status_cluster.json: hive
// gpu-c last reported 42 s before it.
var statusNow = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

// loadClusterFixture reads testdata/status_cluster.json: four members (one
// suspect, one left), hives with busy, saturated, failing, unknown-model and
// simulated workers, an offline hive and one without workers.
func loadClusterFixture(tb testing.TB) (*api.ClusterView, []byte) {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "status_cluster.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var v api.ClusterView
	if err := json.Unmarshal(data, &v); err != nil {
		tb.Fatalf("decode fixture: %v", err)
	}
	return &v, data
}

// checkGolden compares got with testdata/name, or rewrites it under -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	testutil.Golden(t, filepath.Join("testdata", name), got, *updateGolden)
}

func TestRenderStatus_Golden(t *testing.T) {
	v, _ := loadClusterFixture(t)
	var b bytes.Buffer
	if err := RenderStatus(&b, v, statusNow, StatusOptions{}); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "status.golden", b.String())
}

// TestRenderStatus_Widths: on a narrow screen the worker table drops IO,
// then the pid, the uptime, CPU and RSS, keeping state, slots, GPU, VRAM and
// the model; only then are cells shortened, the model last.
func TestRenderStatus_Widths(t *testing.T) {
	v, _ := loadClusterFixture(t)
	for _, width := range []int{80, 100, 160} {
		t.Run(strconv.Itoa(width), func(t *testing.T) {
			var b bytes.Buffer
			if err := RenderStatus(&b, v, statusNow, StatusOptions{Width: width}); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, fmt.Sprintf("status_%d.golden", width), b.String())
			for _, l := range strings.Split(b.String(), "\n") {
				// Tables fit; the free lines below them may not.
				if n := displayWidth(l); n > width && !strings.Contains(l, ": ") {
					t.Errorf("line %q is %d wide on a screen of %d", l, n, width)
				}
			}
		})
	}
}

// TestRenderStatus_Color: with Color, worker states are painted, and the
// text without the escape codes is the plain rendering, column for column;
// without, there is no escape code.
func TestRenderStatus_Color(t *testing.T) {
	v, _ := loadClusterFixture(t)
	v.Hives[0].Workers[2].State = "down"
	for _, width := range []int{0, 80} {
		var plain, color bytes.Buffer
		RenderStatus(&plain, v, statusNow, StatusOptions{Width: width})
		RenderStatus(&color, v, statusNow, StatusOptions{Width: width, Color: true})
		if strings.Contains(plain.String(), "\x1b") {
			t.Errorf("width %d, no colour: escape codes in\n%q", width, plain.String())
		}
		if got := ansiRE.ReplaceAllString(color.String(), ""); got != plain.String() {
			t.Errorf("width %d: colour changed the text or its layout:\n%s\nwant\n%s", width, got, plain.String())
		}
		// The fixture's seven workers: busy, saturated, down (was
		// failing), idle, saturated, idle, offline.
		for _, w := range []string{"\x1b[36mbusy\x1b[0m", "\x1b[33msaturated\x1b[0m", "\x1b[31mdown\x1b[0m", "\x1b[32midle\x1b[0m", "\x1b[90moffline\x1b[0m"} {
			if !strings.Contains(color.String(), w) {
				t.Errorf("width %d: no %q in\n%s", width, w, color.String())
			}
		}
		if n := strings.Count(color.String(), "\x1b["); n != 2*7 {
			t.Errorf("width %d: %d escape codes, want the 7 worker states painted and nothing else:\n%q", width, n, color.String())
		}
	}
}

var ansiRE = regexp.MustCompile("\x1b\\[[0-9;]*m")

func TestRenderStatus_EmptyAndErrorCases(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    api.ClusterView
		want []string
	}{
		{
			name: "no queen, no hives",
			v:    api.ClusterView{Node: "a", Members: []api.MemberView{{Name: "a", Status: "alive"}}, Hives: []api.HiveView{}},
			want: []string{"queen (none)   asked a", "members 1/1 alive   hives 0/0 online   workers 0 online, 0 idle", "queues: none", "workers: none reported"},
		},
		{
			name: "queen unreachable",
			v:    api.ClusterView{Node: "b", Queen: "a", HivesError: "ask queen 10.0.0.1:7833: connection refused"},
			want: []string{"hives unknown", "workers: unknown: ask queen 10.0.0.1:7833: connection refused"},
		},
		{
			name: "escape sequences from the network are defused",
			v: api.ClusterView{Node: "a", Hives: []api.HiveView{{HiveID: "h", Online: true, Workers: []wsapi.ProcessStats{
				{Group: "g", Instance: "1", Model: new("evil\x1b[2J\u009b31m")},
			}}}},
			want: []string{"evil?[2J?31m"},
		},
		{
			name: "a worker serving several models lists them all, with its engine",
			v: api.ClusterView{Node: "a", Hives: []api.HiveView{{HiveID: "h", Online: true, Workers: []wsapi.ProcessStats{
				{Group: "ext", Instance: "11434", Model: new("tiny:latest"), Models: []string{"tiny:latest", "mini:latest"}, Engine: "ollama 0.17.4", Slots: 2},
			}}}},
			want: []string{"tiny:latest, mini:latest (ollama 0.17.4)"},
		},
		{
			// The state is the queen's to say; a view never works it
			// out from the load.
			name: "a state is shown as sent, unknown when an older queen sent none",
			v: api.ClusterView{Node: "a", Hives: []api.HiveView{{HiveID: "h", Online: true, Workers: []wsapi.ProcessStats{
				{Group: "g", Instance: "1", GPUUtilPct: 99, State: "idle"},
				{Group: "g", Instance: "2", Slots: 1},
			}}}},
			want: []string{"workers 2 online, 1 idle", "g/1     idle     0/1    99", "g/2     unknown  0/1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := RenderStatus(&b, &tc.v, statusNow, StatusOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
			if strings.ContainsAny(b.String(), "\x1b\u009b") {
				t.Errorf("output holds an escape character: %q", b.String())
			}
		})
	}
}

func TestStatus_Formatters(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{formatUptime(0), "0s"},
		{formatUptime(59), "59s"},
		{formatUptime(60), "1m00s"},
		{formatUptime(3599), "59m59s"},
		{formatUptime(3600), "1h00m"},
		{formatUptime(86399), "23h59m"},
		{formatUptime(90061), "1d01h"},
		{formatMiB(0), "0 MiB"},
		{formatMiB(1023), "1023 MiB"},
		{formatMiB(1024), "1.0 GiB"},
		{formatMiB(2300), "2.2 GiB"},
		{formatVRAM(512, 1000), "512/1000 MiB"},
		{formatVRAM(512, 24576), "0.5/24.0 GiB"},
		{formatVRAM(61440, 81559), "60.0/79.6 GiB"},
		{formatVRAM(2048, 0), "2.0 GiB"},
		{sinceText(statusNow, statusNow.Add(-42*time.Second)), "42s ago"},
		{sinceText(statusNow, statusNow.Add(time.Second)), "0s ago"},
		{sinceText(statusNow, time.Time{}), "never"},
		{termSafe("plain-name_1.0"), "plain-name_1.0"},
		{termSafe("a\tb\nc\x7fd\x1b"), "a?b?c?d?"},
		{termSafe("bad\xffutf8"), "bad?utf8"},
		{termSafe("modèle-ü"), "modèle-ü"},
		{cutColumns("héllo", 3), "hél"},
		{cutColumns("héllo", 5), "héllo"},
		{cutColumns("héllo", 0), ""},
		{cutColumns("a \x1b[32midle\x1b[0m  b", 4), "a \x1b[32mid\x1b[0m"},
		{cutColumns("a \x1b[32midle\x1b[0m  b", 9), "a \x1b[32midle\x1b[0m  b"},
		{strconv.Itoa(displayWidth("a \x1b[32midle\x1b[0m  b")), "9"},
		{shorten("ollama/11434", 7, true), "oll…434"},
		{shorten("ollama/11434", 12, true), "ollama/11434"},
		{shorten("llama-3.1-70b-instruct", 10, false), "llama-3.1…"},
		{shorten("abc", 1, false), "a"},
		{paintState("down"), "\x1b[31mdown\x1b[0m"},
		{paintState("failing"), "\x1b[31mfailing\x1b[0m"},
		{paintState("unknown"), "unknown"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestStatus_FitBlocks(t *testing.T) {
	rows := func(prefix string, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("%s%d", prefix, i))
		}
		return out
	}
	bs := []statusBlock{
		{head: []string{"summary"}},
		{head: []string{"M"}, rows: rows("m", 3), noun: "members", weight: 1},
		{head: []string{"W"}, rows: rows("w", 10), tail: []string{"* note"}, noun: "workers", weight: 2},
	}
	for _, tc := range []struct {
		name   string
		height int
		want   []string
	}{
		{"no limit", 0, []string{"summary", "", "M", "m0", "m1", "m2", "", "W", "w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9", "* note"}},
		{"exact fit keeps the blank lines", 19, []string{"summary", "", "M", "m0", "m1", "m2", "", "W", "w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9", "* note"}},
		{"one short drops the blank lines", 18, []string{"summary", "M", "m0", "m1", "m2", "W", "w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9", "* note"}},
		{"workers get twice the rows", 10, []string{"summary", "M", "m0", "+2 more members", "W", "w0", "w1", "w2", "+7 more workers", "* note"}},
		{"one row each: only the counts", 7, []string{"summary", "M", "+3 more members", "W", "w0", "+9 more workers", "* note"}},
		{"the fixed lines alone", 4, []string{"summary", "M", "W", "* note"}},
		{"fewer lines than fixed: cut at the bottom", 2, []string{"summary", "M"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fitBlocks(bs, tc.height)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("fitBlocks(%d):\n got %q\nwant %q", tc.height, got, tc.want)
			}
		})
	}
}

// lifecycleFixture is a cluster in the middle of the model lifecycle, as of
// statusNow: gpu-a serves llama and is loading qwen (for 12 s) on a real
// GPU, gpu-b runs simulated GPUs, and its catalog holds an entry that
// failed twice and one whose file is missing.
func lifecycleFixture() *api.ClusterView {
	return &api.ClusterView{Node: "gpu-a", Queen: "gpu-a",
		Members: []api.MemberView{{Name: "gpu-a", Status: "alive", Queen: true}, {Name: "gpu-b", Status: "alive"}},
		Hives: []api.HiveView{
			{HiveID: "gpu-a", Online: true, LastSeen: statusNow, Workers: []wsapi.ProcessStats{
				{Group: wsapi.ManagedGroup, Instance: "30001", Model: new("llama-8b"), Slots: 4, State: "idle"}},
				GPUs: []wsapi.GPUInfo{{Index: 0, Name: "NVIDIA H100 80GB HBM3", TotalVRAMMB: 81559, UsedVRAMMB: 20480, UtilPct: 37, ReservedMB: 33792}},
				Managed: []wsapi.ManagedWorker{
					{Instance: "30001", Model: "llama-8b", Engine: "llama.cpp", State: wsapi.ManagedReady, Since: statusNow.Add(-time.Hour),
						GPUs: []int{0}, VRAMMB: 9318, StartedBy: "gpu-a", Leases: 1},
					{Instance: "30002", Model: "qwen-32b", Engine: "vllm", State: wsapi.ManagedLoading, Since: statusNow.Add(-12 * time.Second),
						GPUs: []int{0}, VRAMMB: 33792, StartedBy: "gpu-a"},
				},
				Catalog: []wsapi.CatalogEntry{
					{Name: "llama-8b", Engine: "llama.cpp", Bytes: 8 << 30, Slots: 4, VRAMMB: 9318, VRAMSource: "learned", LoadMS: 31_000},
					{Name: "qwen-32b", Engine: "vllm", Bytes: 64 << 30, Slots: 8, VRAMMB: 33792, VRAMSource: "configured"},
					{Name: "mistral-7b", Engine: "vllm", Bytes: 14 << 30, Slots: 4, VRAMMB: 16384, VRAMSource: "safetensors",
						Facts:    &wsapi.ModelFacts{Format: "safetensors", Architecture: "mistral", Parameters: 7_241_732_096, Quantization: "BF16"},
						Failures: 2, FailedAt: statusNow.Add(-65 * time.Second), FailReason: "CUDA out of memory\nengine exited with status 1\n"},
					{Name: "phi-3", Engine: "llama.cpp", Bytes: 2 << 30, Slots: 2, VRAMMB: 3072, VRAMSource: "gguf",
						Facts:       &wsapi.ModelFacts{Format: "gguf", Architecture: "phi3", Parameters: 3_821_079_552, Quantization: "Q4_K_M"},
						Unavailable: "file /models/phi-3.gguf not found"},
				}},
			{HiveID: "gpu-b", Online: true, LastSeen: statusNow,
				GPUs: []wsapi.GPUInfo{{Index: 0, Name: "sim", TotalVRAMMB: 24576, UsedVRAMMB: 0, Simulated: true}},
				Catalog: []wsapi.CatalogEntry{
					{Name: "phi-3", Engine: "sim", Bytes: 2 << 30, Slots: 2, VRAMMB: 2048, VRAMSource: "file size", Simulated: true}}},
		},
		Queues: []wsapi.QueueStats{
			{Model: "llama-8b", Leases: 1, Slots: 4, State: "loaded", ServiceMS: 800},
			{Model: "qwen-32b", Waiting: 3, State: "loading", LoadingHive: "gpu-a", LoadingMS: 12_400, ETAMS: 4200},
			{Model: "mistral-7b", Waiting: 1, State: "unavailable", Reason: "every hive that has it failed to start it: engine exited"},
			{Model: "phi-3", State: "available", Hives: []string{"gpu-a", "gpu-b"}},
		},
	}
}

// TestLifecycleFixture_JSON keeps testdata/lifecycle_cluster.json, which
// cmd/rbee's tests serve as /v1/cluster, the cluster of lifecycleFixture.
func TestLifecycleFixture_JSON(t *testing.T) {
	b, err := json.MarshalIndent(lifecycleFixture(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "lifecycle_cluster.json", string(b)+"\n")
}

// hiveTelemetry is the feed message that hive h of a view would have sent.
func hiveTelemetry(h api.HiveView) *wsapi.HiveTelemetry {
	return &wsapi.HiveTelemetry{Type: wsapi.TypeHiveTelemetry, HiveID: h.HiveID, Timestamp: h.LastSeen, Workers: h.Workers,
		Leases: h.Leases, Catalog: h.Catalog, GPUs: h.GPUs, Managed: h.Managed}
}

// TestRenderStatus_ModelLifecycle: the queues say each model's state, its
// expected wait, where it is loading and why it cannot be served; the
// models sections list the workers rbee started (a loading one with its
// time so far), the GPUs and the catalogs with failures and their reason.
func TestRenderStatus_ModelLifecycle(t *testing.T) {
	v := lifecycleFixture()
	for _, tc := range []struct {
		name  string
		width int
		want  [][]string // each: the words of one line, in order
	}{
		{"full", 0, [][]string{
			{"MODEL", "STATE", "WAITING", "LEASES", "SLOTS", "WAIT", "NOTE"},
			{"llama-8b", "loaded", "0", "1", "4", "-"},
			{"qwen-32b", "loading", "3", "0", "0", "~4.2s", "loading on gpu-a 12s"},
			{"mistral-7b", "unavailable", "1", "every hive that has it failed to start it: engine exited"},
			{"phi-3", "available", "can start on gpu-a, gpu-b"},
			{"gpu-a", "models/30001", "ready", "1", "0", "9.1 GiB", "gpu-a", "llama-8b"},
			{"gpu-a", "models/30002", "loading 12s", "0", "0", "33.0 GiB", "qwen-32b"},
			{"gpu-a", "0", "20.0/79.6 GiB", "37", "33.0 GiB", "NVIDIA H100 80GB HBM3"},
			{"gpu-b", "0", "0.0/24.0 GiB*", "0*", "sim"},
			{"* simulated GPUs"},
			{"gpu-a", "llama-8b", "llama.cpp", "8.0 GiB", "4", "9.1 GiB learned", "31.0s", "ok"},
			{"gpu-a", "mistral-7b", "vllm", "mistral 7.2B BF16", "14.0 GiB", "16.0 GiB safetensors", "failed 2x, 1m05s ago: CUDA out of memory | engine exited with status 1"},
			{"gpu-a", "phi-3", "phi3 3.8B Q4_K_M", "3.0 GiB gguf", "cannot start: file /models/phi-3.gguf not found"},
			{"gpu-a", "qwen-32b", "vllm", "64.0 GiB", "33.0 GiB configured", "ok"},
			{"gpu-b", "phi-3", "sim", "simulated"},
		}},
		{"narrow", 80, [][]string{
			{"qwen-32b", "loading", "~4.2s", "loading on gpu-a 12s"},
			{"mistral-7b", "unavailable", "every hive"},
			{"models/30002", "loading 12s"},
			{"mistral-7b", "failed 2x"},
			{"phi-3", "cannot start"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := RenderStatus(&b, v, statusNow, StatusOptions{Width: tc.width}); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(b.String(), "\n")
			for _, w := range tc.want {
				if !testutil.HasLineWith(lines, w) {
					t.Errorf("no line with all of %q in\n%s", w, b.String())
				}
			}
			for _, l := range lines {
				if n := displayWidth(l); tc.width > 0 && n > tc.width && !strings.Contains(l, ": ") {
					t.Errorf("line %q is %d wide on a screen of %d", l, n, tc.width)
				}
			}
		})
	}
	// A queen from before the lifecycle sends none of it: the queue table
	// keeps its old columns.
	var b bytes.Buffer
	old := &api.ClusterView{Node: "a", Queues: []wsapi.QueueStats{{Model: "m", Waiting: 1, Slots: 2}}}
	if err := RenderStatus(&b, old, statusNow, StatusOptions{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "STATE") || !testutil.HasLineWith(strings.Split(b.String(), "\n"), []string{"m", "1", "0", "2"}) {
		t.Errorf("a queue without lifecycle fields:\n%s", b.String())
	}
	// An offline hive's lifecycle is what it did when it went silent: its
	// sections are left out.
	v.Hives[1].Online = false
	b.Reset()
	if err := RenderStatus(&b, v, statusNow, StatusOptions{}); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(b.String(), "\n"); testutil.HasLineWith(lines, []string{"gpu-b", "0.0/24.0 GiB*"}) ||
		testutil.HasLineWith(lines, []string{"gpu-b", "phi-3", "simulated"}) || !testutil.HasLineWith(lines, []string{"gpu-a", "models/30002", "loading"}) {
		t.Errorf("with gpu-b offline:\n%s", b.String())
	}
}

func TestStatus_LifecycleFormatters(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{etaText(0), "-"},
		{etaText(4200), "~4.2s"},
		{etaText(65_000), "~1m05s"},
		{formatGiB(9771050598), "9.1 GiB"},
		{oneLine("a\n  b  \n\nc\n"), "a | b | c"},
		{managedState(wsapi.ManagedWorker{State: "loading", Since: statusNow.Add(-12 * time.Second)}, statusNow), "loading 12s"},
		{managedState(wsapi.ManagedWorker{State: "draining"}, statusNow), "draining"},
		{catalogStatus(wsapi.CatalogEntry{Unavailable: "engine vllm not found", Failures: 1, FailReason: "boom"}, statusNow),
			"cannot start: engine vllm not found; failed 1x: boom"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// A down worker shows as down in rbee status and rbee top, and the views say
// why on a line of their own, which the state column has no room for.
func TestRenderStatus_DownWorkerSaysWhy(t *testing.T) {
	v, _ := loadClusterFixture(t)
	w := &v.Hives[0].Workers[2]
	w.Health, w.HealthReason = wsapi.HealthDown, "GET http://127.0.0.1:11434/health: connection refused"
	w.State, w.StateReason = scheduler.StateDown, "the hive cannot reach it: "+w.HealthReason
	var b bytes.Buffer
	if err := RenderStatus(&b, v, statusNow, StatusOptions{}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	want := "down workers: " + v.Hives[0].HiveID + "/ollama/11434 (the hive cannot reach it: GET http://127.0.0.1:11434/health: connection refused)"
	if !testutil.HasLineWith(lines, []string{v.Hives[0].HiveID, "ollama/11434", "down"}) || !testutil.HasLineWith(lines, []string{want}) {
		t.Errorf("rbee status shows no down worker with its reason %q:\n%s", want, b.String())
	}
	st := NewTopState(hiveTTL)
	st.Apply(TopUpdate{View: v}, statusNow)
	st.Apply(TopUpdate{Live: true}, statusNow)
	top := TopLines(st, TopScreen{Addr: "127.0.0.1:7833", Now: statusNow, Width: 200, Height: 60})
	if !testutil.HasLineWith(top, []string{"ollama/11434", "down"}) || !testutil.HasLineWith(top, []string{want}) {
		t.Errorf("rbee top shows no down worker with its reason:\n%s", strings.Join(top, "\n"))
	}
}

// TestManagedState_Stage: a loading worker waiting for its model's files
// shows the copy's progress instead of its time.
func TestManagedState_Stage(t *testing.T) {
	now := time.Now()
	m := wsapi.ManagedWorker{State: wsapi.ManagedLoading, Since: now.Add(-12 * time.Second)}
	if got := managedState(m, now); got != "loading 12s" {
		t.Errorf("got %q", got)
	}
	m.Stage = "copying 43% of 4.1 GiB at 1.1 GiB/s, eta 12s"
	if got := managedState(m, now); got != m.Stage {
		t.Errorf("got %q, want the stage", got)
	}
}
