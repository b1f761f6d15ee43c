package telemetry

import (
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Mountinfo samples, trimmed to the interesting lines but otherwise as the
// kernel prints them.
const (
	// Ubuntu 22.04, systemd, unified hierarchy.
	mountinfoSystemd = `22 27 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 27 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 27 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=16318820k,nr_inodes=4079705,mode=755,inode64
26 27 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=3270044k,mode=755,inode64
27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
28 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
31 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
32 22 0:28 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
34 22 0:30 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:13 - bpf bpf rw,mode=700
`
	// Fedora 39: more optional fields between the options and the "-".
	mountinfoFedora = `23 97 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw,seclabel
36 23 0:31 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 master:1 propagate_from:1 - cgroup2 cgroup2 rw,seclabel,nsdelegate,memory_recursiveprot
97 1 0:33 /root / rw,relatime shared:1 - btrfs /dev/nvme0n1p3 rw,seclabel,compress=zstd:1,ssd,space_cache=v2,subvolid=257,subvol=/root
`
	// Docker container with a private cgroup namespace: no optional
	// fields, read-only, and the source is "cgroup" although the type is
	// cgroup2.
	mountinfoDocker = `1187 1104 0:297 / / rw,relatime master:479 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/QX4Z:/var/lib/docker/overlay2/l/7RYA,upperdir=/var/lib/docker/overlay2/5f1c/diff,workdir=/var/lib/docker/overlay2/5f1c/work
1188 1187 0:300 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1189 1187 0:301 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64
1191 1187 0:303 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1192 1191 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
1105 1187 254:1 /var/lib/docker/containers/5f1c/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
`
	// CentOS 7: cgroup v1 only.
	mountinfoV1 = `18 61 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
29 24 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
30 24 0:27 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,blkio
61 1 253:0 / / rw,relatime shared:1 - xfs /dev/mapper/centos-root rw,attr2,inode64,noquota
`
	// Ubuntu 20.04, hybrid: v1 controllers plus an empty cgroup2 hierarchy.
	mountinfoHybrid = `30 22 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
35 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
36 30 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
`
)

func TestCgroupRoot_FindsTheCgroup2Mount(t *testing.T) {
	longOverlay := "1 0 0:1 / / rw - overlay overlay rw,lowerdir=" +
		strings.Repeat("/var/lib/docker/overlay2/l/ABCDEFGHIJ:", 3000) + "x\n"
	tests := []struct {
		name      string
		mountinfo string
		want      string
	}{
		{"systemd host", mountinfoSystemd, "/sys/fs/cgroup"},
		{"several optional fields", mountinfoFedora, "/sys/fs/cgroup"},
		{"container, type cgroup2 with source cgroup", mountinfoDocker, "/sys/fs/cgroup"},
		{"hybrid host gives the unified mount", mountinfoHybrid, "/sys/fs/cgroup/unified"},
		{
			"/sys/fs/cgroup wins over a mount listed earlier",
			"50 40 0:44 / /run/lxc/cgroup2 rw - cgroup2 cgroup2 rw\n" + mountinfoSystemd,
			"/sys/fs/cgroup",
		},
		{
			"first of several when none is /sys/fs/cgroup",
			"50 40 0:44 / /run/a rw - cgroup2 cgroup2 rw\n51 40 0:44 / /run/b rw - cgroup2 cgroup2 rw\n",
			"/run/a",
		},
		{
			"escaped space in the mount point",
			`50 40 0:44 / /mnt/my\040cgroups rw,relatime - cgroup2 none rw` + "\n",
			"/mnt/my cgroups",
		},
		{
			"type is read after the dash, not from the mount point",
			"50 40 0:44 / /cgroup2 rw - tmpfs cgroup2 rw\n" + mountinfoV1 + "51 40 0:45 / /x rw - cgroup2 cgroup2 rw",
			"/x",
		},
		{"line longer than a scanner token", longOverlay + mountinfoDocker, "/sys/fs/cgroup"},
		{"no trailing newline", strings.TrimSuffix(mountinfoSystemd, "\n"), "/sys/fs/cgroup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CgroupRoot(strings.NewReader(tt.mountinfo))
			if err != nil {
				t.Fatalf("CgroupRoot: %v", err)
			}
			if got != tt.want {
				t.Errorf("CgroupRoot = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCgroupRoot_NoCgroup2IsErrNoCgroup2(t *testing.T) {
	tests := []struct {
		name      string
		mountinfo string
	}{
		{"cgroup v1 only", mountinfoV1},
		{"empty", ""},
		{"malformed lines", "garbage\n1 2 3\n- cgroup2\n"},
		{"cgroup2 as the last field has no type after the dash", "50 40 0:44 / /x rw - \n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CgroupRoot(strings.NewReader(tt.mountinfo))
			if !errors.Is(err, ErrNoCgroup2) {
				t.Errorf("CgroupRoot = %q, %v; want ErrNoCgroup2", got, err)
			}
		})
	}
}

func TestCgroupRoot_ReadErrorIsReported(t *testing.T) {
	boom := errors.New("boom")
	_, err := CgroupRoot(iotest.ErrReader(boom))
	if !errors.Is(err, boom) || errors.Is(err, ErrNoCgroup2) {
		t.Errorf("CgroupRoot on a failing reader: %v; want the read error, not ErrNoCgroup2", err)
	}
}

const hiveFixture = "testdata/cgroup/hive"

// copyFixture copies a fixture tree to a temporary directory that a test may
// change between reads.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(name)); err != nil {
		t.Fatalf("copy fixture: %v", err)
	}
	return dst
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func workerPath(root, group, instance string) string {
	return filepath.Join(root, SliceName, group, instance)
}

func TestCgroupReader_Workers_ListsGroupsAndInstances(t *testing.T) {
	got, err := CgroupReader{Root: hiveFixture}.Workers()
	if err != nil {
		t.Fatalf("Workers: %v", err)
	}
	// Skipped: rbee.slice/README and llm/notes.txt (files), .staging (hidden)
	// and llm/8082~ (odd name).
	want := []CgroupWorker{
		{Group: "embed", Instance: "9000", PIDs: []int32{6001}},
		{Group: "embed", Instance: "9001", PIDs: nil}, // the empty leaf
		{Group: "llm", Instance: "8080", PIDs: []int32{4321, 4330}},
		// The leaf and its nested cgroups, sorted, 5230 listed twice once.
		{Group: "llm", Instance: "8081", PIDs: []int32{5100, 5107, 5230, 5301}},
	}
	if len(got) != len(want) {
		t.Fatalf("Workers = %+v\nwant %+v", got, want)
	}
	for i, w := range want {
		g := got[i]
		if g.Group != w.Group || g.Instance != w.Instance || !slices.Equal(g.PIDs, w.PIDs) {
			t.Errorf("worker %d = %s/%s %v, want %s/%s %v", i, g.Group, g.Instance, g.PIDs, w.Group, w.Instance, w.PIDs)
		}
		if wantPath := workerPath(hiveFixture, w.Group, w.Instance); g.Path != wantPath {
			t.Errorf("worker %d path = %q, want %q", i, g.Path, wantPath)
		}
	}
}

func TestCgroupReader_Workers_NoSliceIsNoWorkers(t *testing.T) {
	for _, root := range []string{"testdata/cgroup/no-slice", filepath.Join(t.TempDir(), "absent")} {
		got, err := CgroupReader{Root: root}.Workers()
		if err != nil || len(got) != 0 {
			t.Errorf("Workers under %s = %v, %v; want none, no error", root, got, err)
		}
	}
}

func TestCgroupReader_Workers_UnreadableWorkerIsNamedOthersListed(t *testing.T) {
	root := copyFixture(t, hiveFixture)
	writeFile(t, filepath.Join(workerPath(root, "llm", "8080"), "cgroup.procs"), "4321\nnot-a-pid\n")
	got, err := CgroupReader{Root: root}.Workers()
	if err == nil || !strings.Contains(err.Error(), "llm/8080") {
		t.Errorf("Workers error = %v, want one naming llm/8080", err)
	}
	var ids []string
	for _, w := range got {
		ids = append(ids, wsapi.WorkerID(w.Group, w.Instance))
	}
	if want := []string{"embed/9000", "embed/9001", "llm/8081"}; !slices.Equal(ids, want) {
		t.Errorf("Workers listed %v, want %v", ids, want)
	}
}

func TestCgroupReader_Workers_SliceThatIsAFileIsAnError(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, SliceName), "")
	if _, err := (CgroupReader{Root: root}).Workers(); err == nil {
		t.Error("Workers with rbee.slice a plain file: no error")
	}
}

func TestCgroupReader_Sample_ReadsWhatExists(t *testing.T) {
	tests := []struct {
		name            string
		group, instance string
		want            CgroupSample
	}{
		{
			"all controllers, io summed over two devices", "llm", "8080",
			CgroupSample{
				CPUUsageUsec: 8123456, MemoryBytes: 2 << 30,
				IOReadBytes: 4194304000 + 1048576, IOWriteBytes: 10485760 + 2097152,
				Known: CgroupCPU | CgroupMemory | CgroupIO,
			},
		},
		{
			// cpu.stat and memory.current count the subtree already:
			// the leaf's own figures, not a sum with its children.
			"nested child cgroup", "llm", "8081",
			CgroupSample{
				CPUUsageUsec: 11750000, MemoryBytes: 5 << 30, IOReadBytes: 8388608000,
				Known: CgroupCPU | CgroupMemory | CgroupIO,
			},
		},
		{
			"io controller not enabled", "embed", "9000",
			CgroupSample{CPUUsageUsec: 3000000, MemoryBytes: 734003200, Known: CgroupCPU | CgroupMemory},
		},
		{
			"empty io.stat is known zero IO", "embed", "9001",
			CgroupSample{CPUUsageUsec: 420000, Known: CgroupCPU | CgroupMemory | CgroupIO},
		},
	}
	r := CgroupReader{Root: hiveFixture}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := CgroupWorker{Group: tt.group, Instance: tt.instance, Path: workerPath(hiveFixture, tt.group, tt.instance)}
			got, err := r.Sample(w)
			if err != nil {
				t.Fatalf("Sample: %v", err)
			}
			if got != tt.want {
				t.Errorf("Sample = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestCgroupReader_Sample_NoControllerFilesIsNotAnError(t *testing.T) {
	// A hybrid host's unified hierarchy may enable no controller at all.
	dir := t.TempDir()
	got, err := CgroupReader{Root: dir}.Sample(CgroupWorker{Path: dir})
	if err != nil || got != (CgroupSample{}) {
		t.Errorf("Sample of a cgroup with no controller files = %+v, %v; want all unknown, no error", got, err)
	}
}

func TestCgroupReader_Sample_WorkerExitedBetweenReadsIsNotExist(t *testing.T) {
	root := copyFixture(t, hiveFixture)
	r := CgroupReader{Root: root}
	workers, err := r.Workers()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(workers, func(w CgroupWorker) bool { return w.Instance == "8080" })
	if i < 0 {
		t.Fatal("llm/8080 not listed")
	}
	if err := os.RemoveAll(workers[i].Path); err != nil {
		t.Fatal(err)
	}
	_, err = r.Sample(workers[i])
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Sample of a removed cgroup: %v, want os.ErrNotExist", err)
	}
}

func TestCgroupReader_Sample_MalformedFileIsAnError(t *testing.T) {
	root := copyFixture(t, hiveFixture)
	path := workerPath(root, "llm", "8080")
	writeFile(t, filepath.Join(path, "memory.current"), "max\n")
	_, err := CgroupReader{Root: root}.Sample(CgroupWorker{Path: path})
	if err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "memory.current") {
		t.Errorf("Sample with a bad memory.current: %v, want a parse error naming it", err)
	}
}

func TestCgroupFiles_Parse(t *testing.T) {
	tests := []struct {
		name    string
		parse   func([]byte, *CgroupSample) error
		data    string
		want    CgroupSample
		wantErr bool
	}{
		{"cpu.stat", parseCPUStat, "usage_usec 42\nuser_usec 40\nsystem_usec 2\n", CgroupSample{CPUUsageUsec: 42}, false},
		{"cpu.stat usage_usec not first", parseCPUStat, "nr_periods 0\nusage_usec 7\n", CgroupSample{CPUUsageUsec: 7}, false},
		{"cpu.stat without usage_usec", parseCPUStat, "user_usec 40\n", CgroupSample{}, true},
		{"cpu.stat bad number", parseCPUStat, "usage_usec -1\n", CgroupSample{}, true},
		{"memory.current", parseMemoryCurrent, "1048576\n", CgroupSample{MemoryBytes: 1 << 20}, false},
		{"memory.current empty", parseMemoryCurrent, "", CgroupSample{}, true},
		{
			"io.stat sums devices, ignores other keys", parseIOStat,
			"8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n8:16 rbytes=10 wbytes=20 rios=30 wios=40 dbytes=0 dios=0\n",
			CgroupSample{IOReadBytes: 11, IOWriteBytes: 22}, false,
		},
		{"io.stat device with rbytes only", parseIOStat, "259:0 rbytes=9\n", CgroupSample{IOReadBytes: 9}, false},
		{"io.stat empty", parseIOStat, "", CgroupSample{}, false},
		{"io.stat bad number", parseIOStat, "8:0 rbytes=1 wbytes=x\n", CgroupSample{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got CgroupSample
			err := tt.parse([]byte(tt.data), &got)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parse %q: err = %v, want error %v", tt.data, err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("parse %q = %+v, want %+v", tt.data, got, tt.want)
			}
		})
	}
}

func TestRatesBetween(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	all := CgroupCPU | CgroupMemory | CgroupIO
	base := CgroupSample{CPUUsageUsec: 10_000_000, IOReadBytes: 100 << 20, IOWriteBytes: 50 << 20, Known: all}
	// after returns base advanced by cpu microseconds and rd, wr MiB.
	after := func(cpu uint64, rd, wr uint64) CgroupSample {
		s := base
		s.CPUUsageUsec += cpu
		s.IOReadBytes += rd << 20
		s.IOWriteBytes += wr << 20
		return s
	}
	tests := []struct {
		name      string
		prev, cur CgroupSample
		wall      time.Duration
		want      Rates
	}{
		{"one core busy", base, after(1_000_000, 0, 0), time.Second, Rates{CPUPct: 100}},
		{"half a core", base, after(500_000, 0, 0), time.Second, Rates{CPUPct: 50}},
		{"several cores", base, after(2_500_000, 0, 0), time.Second, Rates{CPUPct: 250}},
		{"io MiB per second", base, after(0, 30, 5), time.Second, Rates{IOReadMBs: 30, IOWriteMBs: 5}},
		{"late tick divides by actual wall time", base, after(1_000_000, 30, 6), 2 * time.Second, Rates{CPUPct: 50, IOReadMBs: 15, IOWriteMBs: 3}},
		{"early tick", base, after(250_000, 1, 0), 250 * time.Millisecond, Rates{CPUPct: 100, IOReadMBs: 4}},
		{"idle", base, base, time.Second, Rates{}},
		{
			"cpu counter went backwards: cpu 0, io still measured", base,
			CgroupSample{CPUUsageUsec: 1000, IOReadBytes: base.IOReadBytes + 2<<20, IOWriteBytes: base.IOWriteBytes, Known: all},
			time.Second, Rates{IOReadMBs: 2},
		},
		{
			"recreated cgroup: every counter lower", base,
			CgroupSample{CPUUsageUsec: 5, IOReadBytes: 1, IOWriteBytes: 1, Known: all},
			time.Second, Rates{},
		},
		{
			"read counter backwards, write forwards", base,
			CgroupSample{CPUUsageUsec: base.CPUUsageUsec, IOReadBytes: 0, IOWriteBytes: base.IOWriteBytes + 1<<20, Known: all},
			time.Second, Rates{IOWriteMBs: 1},
		},
		{"zero wall time", base, after(1_000_000, 1, 1), 0, Rates{}},
		{"clock went backwards", base, after(1_000_000, 1, 1), -time.Second, Rates{}},
		{
			"io unknown now (controller disabled)", base,
			CgroupSample{CPUUsageUsec: base.CPUUsageUsec + 1_000_000, Known: CgroupCPU | CgroupMemory},
			time.Second, Rates{CPUPct: 100},
		},
		{
			"io unknown before", CgroupSample{CPUUsageUsec: base.CPUUsageUsec, Known: CgroupCPU},
			after(1_000_000, 8, 8), time.Second, Rates{CPUPct: 100},
		},
		{
			"cpu unknown before",
			CgroupSample{IOReadBytes: base.IOReadBytes, IOWriteBytes: base.IOWriteBytes, Known: CgroupIO},
			after(1_000_000, 1, 0), time.Second, Rates{IOReadMBs: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RatesBetween(tt.prev, tt.cur, t0, t0.Add(tt.wall))
			if !ratesClose(got, tt.want) {
				t.Errorf("RatesBetween over %v = %+v, want %+v", tt.wall, got, tt.want)
			}
		})
	}
}

func ratesClose(a, b Rates) bool {
	near := func(x, y float64) bool { return math.Abs(x-y) < 1e-9 }
	return near(a.CPUPct, b.CPUPct) && near(a.IOReadMBs, b.IOReadMBs) && near(a.IOWriteMBs, b.IOWriteMBs)
}

// setCounters overwrites a fixture worker's cpu.stat and io.stat.
func setCounters(t *testing.T, dir string, cpuUsec, rbytes, wbytes uint64) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "cpu.stat"), "usage_usec "+strconv.FormatUint(cpuUsec, 10)+"\nuser_usec 0\nsystem_usec 0\n")
	writeFile(t, filepath.Join(dir, "io.stat"), "259:0 rbytes="+strconv.FormatUint(rbytes, 10)+" wbytes="+strconv.FormatUint(wbytes, 10)+" rios=0 wios=0 dbytes=0 dios=0\n")
}

func findStats(stats []WorkerCgroupStats, group, instance string) (WorkerCgroupStats, bool) {
	i := slices.IndexFunc(stats, func(s WorkerCgroupStats) bool { return s.Group == group && s.Instance == instance })
	if i < 0 {
		return WorkerCgroupStats{}, false
	}
	return stats[i], true
}

func TestCgroupTracker_Collect(t *testing.T) {
	root := copyFixture(t, hiveFixture)
	w8080 := workerPath(root, "llm", "8080")
	tr := NewCgroupTracker(CgroupReader{Root: root})
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

	setCounters(t, w8080, 10_000_000, 100<<20, 0)
	first, err := tr.Collect(t0)
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	var ids []string
	for _, s := range first {
		ids = append(ids, wsapi.WorkerID(s.Group, s.Instance))
	}
	// embed/9001 has no processes: not a running worker.
	if want := []string{"embed/9000", "llm/8080", "llm/8081"}; !slices.Equal(ids, want) {
		t.Fatalf("first Collect reported %v, want %v", ids, want)
	}
	s, _ := findStats(first, "llm", "8080")
	if s.CPUPct != 0 || s.IOReadMBs != 0 || s.IOWriteMBs != 0 {
		t.Errorf("first sight rates = %+v, want zero", s)
	}
	if s.RSSMB != 2048 || !slices.Equal(s.PIDs, []int32{4321, 4330}) || s.Known != CgroupCPU|CgroupMemory|CgroupIO {
		t.Errorf("first sight = %+v, want 2048 MiB, pids 4321 4330, all known", s)
	}
	if s, _ := findStats(first, "embed", "9000"); s.Known.Has(CgroupIO) || !s.Known.Has(CgroupMemory) {
		t.Errorf("embed/9000 known = %b, want memory without io", s.Known)
	}

	// A late tick: 2 s of wall time, 1.5 cores busy, 40 MiB read, 8 MiB written.
	setCounters(t, w8080, 13_000_000, 140<<20, 8<<20)
	second, err := tr.Collect(t0.Add(2 * time.Second))
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	s, _ = findStats(second, "llm", "8080")
	if !ratesClose(Rates{s.CPUPct, s.IOReadMBs, s.IOWriteMBs}, Rates{CPUPct: 150, IOReadMBs: 20, IOWriteMBs: 4}) {
		t.Errorf("second tick = %+v, want 150%% cpu, 20 MiB/s read, 4 MiB/s write", s)
	}
	if s, _ := findStats(second, "llm", "8081"); s.CPUPct != 0 {
		t.Errorf("unchanged llm/8081 cpu = %v, want 0", s.CPUPct)
	}

	// The worker restarted in a recreated cgroup: counters start over.
	setCounters(t, w8080, 300_000, 1<<20, 0)
	third, err := tr.Collect(t0.Add(3 * time.Second))
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	if s, _ := findStats(third, "llm", "8080"); s.CPUPct != 0 || s.IOReadMBs != 0 || s.IOWriteMBs != 0 {
		t.Errorf("after counters went backwards = %+v, want zero rates", s)
	}
	setCounters(t, w8080, 800_000, 1<<20, 0)
	fourth, err := tr.Collect(t0.Add(4 * time.Second))
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	if s, _ := findStats(fourth, "llm", "8080"); math.Abs(s.CPUPct-50) > 1e-9 {
		t.Errorf("tick after a restart cpu = %v, want 50 (measured from the new counters)", s.CPUPct)
	}
}

func TestCgroupTracker_ForgetsWorkersThatDisappeared(t *testing.T) {
	root := copyFixture(t, hiveFixture)
	w8080 := workerPath(root, "llm", "8080")
	saved := t.TempDir()
	if err := os.CopyFS(saved, os.DirFS(w8080)); err != nil {
		t.Fatal(err)
	}
	tr := NewCgroupTracker(CgroupReader{Root: root})
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

	setCounters(t, w8080, 1_000_000, 0, 0)
	if _, err := tr.Collect(t0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(w8080); err != nil {
		t.Fatal(err)
	}
	gone, err := tr.Collect(t0.Add(time.Second))
	if err != nil {
		t.Fatalf("Collect after a worker left: %v", err)
	}
	if _, ok := findStats(gone, "llm", "8080"); ok {
		t.Error("a removed worker is still reported")
	}
	if len(gone) != 2 {
		t.Errorf("Collect after a worker left reported %d workers, want the other 2", len(gone))
	}

	// It comes back with higher counters than first seen: were its old
	// sample kept, this would show a rate.
	if err := os.CopyFS(w8080, os.DirFS(saved)); err != nil {
		t.Fatal(err)
	}
	setCounters(t, w8080, 9_000_000, 50<<20, 50<<20)
	back, err := tr.Collect(t0.Add(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	s, ok := findStats(back, "llm", "8080")
	if !ok || s.CPUPct != 0 || s.IOReadMBs != 0 || s.IOWriteMBs != 0 {
		t.Errorf("returning worker = %+v (listed %v), want first-sight zero rates", s, ok)
	}
}

func TestCgroupTracker_UnreadableWorkerIsAnErrorOthersReported(t *testing.T) {
	root := copyFixture(t, hiveFixture)
	writeFile(t, filepath.Join(workerPath(root, "llm", "8080"), "io.stat"), "8:0 rbytes=oops\n")
	stats, err := NewCgroupTracker(CgroupReader{Root: root}).Collect(time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC))
	if err == nil || !strings.Contains(err.Error(), "llm/8080") {
		t.Errorf("Collect error = %v, want one naming llm/8080", err)
	}
	if len(stats) != 2 {
		t.Errorf("Collect reported %d workers, want the 2 readable ones", len(stats))
	}
}
