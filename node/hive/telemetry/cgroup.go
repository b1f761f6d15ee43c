package telemetry

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrNoCgroup2 means the machine has no cgroup v2 hierarchy mounted (a
// cgroup v1-only host): workers are then found and measured by process only.
var ErrNoCgroup2 = errors.New("no cgroup2 mount")

// SliceName is the cgroup under the cgroup2 root that holds every worker as
// SliceName/<group>/<instance>.
const SliceName = "rbee.slice"

// defaultCgroup2Mount is where systemd and container runtimes mount cgroup2.
const defaultCgroup2Mount = "/sys/fs/cgroup"

// bytesPerMiB converts byte counts to the MB of rss_mb and io_*_mb_s. The
// wire calls them MB; binary units keep them equal to what free, top and
// iotop -m print.
const bytesPerMiB = 1 << 20

// FindCgroupRoot is CgroupRoot of this process's /proc/self/mountinfo.
func FindCgroupRoot() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2: %w", err)
	}
	defer f.Close()
	return CgroupRoot(f)
}

// CgroupRoot returns the mount point of the cgroup v2 hierarchy listed in
// mountinfo (the content of /proc/self/mountinfo). cgroup v1 mounts are
// ignored; a hybrid host yields its cgroup2 mount (often
// /sys/fs/cgroup/unified, with few or no controllers enabled). When several
// cgroup2 mounts exist, /sys/fs/cgroup wins, because that is where
// `rbee worker run` and systemd put cgroups; otherwise the first one listed.
func CgroupRoot(mountinfo io.Reader) (string, error) {
	br := bufio.NewReader(mountinfo)
	first := ""
	for {
		// ReadString, not a Scanner: overlay mounts with many layers make
		// lines longer than a Scanner's default token limit.
		line, err := br.ReadString('\n')
		if mp, ok := cgroup2MountPoint(line); ok {
			if mp == defaultCgroup2Mount {
				return mp, nil
			}
			if first == "" {
				first = mp
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read mountinfo: %w", err)
		}
	}
	if first == "" {
		return "", fmt.Errorf("find cgroup root: %w", ErrNoCgroup2)
	}
	return first, nil
}

// cgroup2MountPoint parses one mountinfo line (proc(5)): "ID PARENT MAJ:MIN
// ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS". The
// number of optional fields varies, so the filesystem type is the field after
// the lone "-", never a fixed column.
func cgroup2MountPoint(line string) (string, bool) {
	fields := strings.Fields(line)
	if len(fields) < 7 {
		return "", false
	}
	for i := 6; i < len(fields)-1; i++ {
		if fields[i] == "-" {
			if fields[i+1] != "cgroup2" {
				return "", false
			}
			return unescapeMountinfo(fields[4]), true
		}
	}
	return "", false
}

// unescapeMountinfo undoes the kernel's octal escapes of space, tab, newline
// and backslash (\040, \011, \012, \134) in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// CgroupReader reads workers' cgroups under Root/rbee.slice. Root is the
// cgroup2 mount (CgroupRoot, or the node's --cgroup-root). It holds no state.
type CgroupReader struct {
	Root string
}

// CgroupWorker is one worker cgroup: Root/rbee.slice/<Group>/<Instance>.
type CgroupWorker struct {
	Group    string
	Instance string
	Path     string
	// PIDs are the processes of the worker cgroup and of every cgroup below
	// it (a worker may put its children in sub-cgroups), sorted, each once.
	// Empty when the cgroup outlived its processes.
	PIDs []int32
}

// Workers lists the worker cgroups, sorted by group then instance. A missing
// rbee.slice means no workers, not an error. Plain files and odd names (hidden, or characters that do not
// belong in a worker id) at the group and instance levels are skipped. A
// worker whose cgroup vanishes during the walk has exited and is left out. A
// worker that cannot be read for another reason is left out too and named in
// the returned error, beside the workers that could be read: a partial list
// is still worth reporting.
func (r CgroupReader) Workers() ([]CgroupWorker, error) {
	slice := filepath.Join(r.Root, SliceName)
	groups, err := os.ReadDir(slice)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list worker groups: %w", err)
	}
	var (
		workers []CgroupWorker
		errs    []error
	)
	for _, g := range groups {
		if !g.IsDir() || !validCgroupName(g.Name()) {
			continue
		}
		instances, err := os.ReadDir(filepath.Join(slice, g.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the whole group went away after we listed it
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("list instances of %s: %w", g.Name(), err))
			continue
		}
		for _, in := range instances {
			if !in.IsDir() || !validCgroupName(in.Name()) {
				continue
			}
			path := filepath.Join(slice, g.Name(), in.Name())
			pids, err := treePIDs(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue // exited
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("read pids of %s/%s: %w", g.Name(), in.Name(), err))
				continue
			}
			workers = append(workers, CgroupWorker{Group: g.Name(), Instance: in.Name(), Path: path, PIDs: pids})
		}
	}
	return workers, errors.Join(errs...)
}

// validCgroupName accepts names that are safe as a group or instance in a
// worker id ("hive/group/instance") and on a dashboard: letters, digits and
// . _ - : @, not starting with a dot (cgroupfs has no dot directories, so
// one is something else's scratch space).
func validCgroupName(name string) bool {
	if name == "" || name[0] == '.' {
		return false
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune("._-:@", c):
		default:
			return false
		}
	}
	return true
}

// treePIDs returns the pids of cgroup dir and all its descendants, sorted and
// deduplicated (cgroup.procs may list a pid twice if it moved out and back).
// It fails with fs.ErrNotExist only when dir itself is gone; a descendant
// removed mid-walk just has no pids.
func treePIDs(dir string) ([]int32, error) {
	var pids []int32
	var walk func(d string, top bool) error
	walk = func(d string, top bool) error {
		entries, err := os.ReadDir(d)
		if err != nil {
			if !top && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		ps, err := readPIDs(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			return err
		}
		pids = append(pids, ps...)
		for _, e := range entries {
			if e.IsDir() {
				if err := walk(filepath.Join(d, e.Name()), false); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(dir, true); err != nil {
		return nil, err
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// readPIDs parses a cgroup.procs file, one pid a line. A missing file (the
// cgroup was just removed) holds no pids.
func readPIDs(path string) ([]int32, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pids []int32
	for _, line := range strings.Fields(string(data)) {
		n, err := strconv.ParseInt(line, 10, 32)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("parse %s: bad pid %q", path, line)
		}
		pids = append(pids, int32(n))
	}
	return pids, nil
}

// CgroupFields says which figures of a CgroupSample were read. A cgroup shows
// only the files of the controllers enabled for it: on a hybrid host, or when
// a parent's cgroup.subtree_control lacks memory or io, those are missing.
type CgroupFields uint8

const (
	CgroupCPU    CgroupFields = 1 << iota // cpu.stat usage_usec
	CgroupMemory                          // memory.current
	CgroupIO                              // io.stat rbytes and wbytes
)

// Has reports whether every field in x is known.
func (f CgroupFields) Has(x CgroupFields) bool { return f&x == x }

// CgroupSample is a worker cgroup's cumulative counters at one instant. A
// figure whose field is not in Known is zero and means "unknown". The kernel
// counts these files over the cgroup's whole subtree, so a worker's nested
// cgroups are included without reading them.
type CgroupSample struct {
	CPUUsageUsec uint64 // cpu.stat usage_usec: CPU time of all its tasks
	MemoryBytes  uint64 // memory.current
	IOReadBytes  uint64 // io.stat rbytes, summed over devices
	IOWriteBytes uint64 // io.stat wbytes, summed over devices
	Known        CgroupFields
}

// Sample reads w's counters. A missing file leaves its field unknown; a
// cgroup that no longer exists (the worker exited after Workers) gives an
// error wrapping os.ErrNotExist.
func (r CgroupReader) Sample(w CgroupWorker) (CgroupSample, error) {
	files := [...]struct {
		name  string
		field CgroupFields
		parse func(data []byte, s *CgroupSample) error
	}{
		{"cpu.stat", CgroupCPU, parseCPUStat},
		{"memory.current", CgroupMemory, parseMemoryCurrent},
		{"io.stat", CgroupIO, parseIOStat},
	}
	var s CgroupSample
	missing := false
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(w.Path, f.name))
		if errors.Is(err, fs.ErrNotExist) {
			missing = true
			continue
		}
		if err != nil {
			return CgroupSample{}, fmt.Errorf("sample cgroup %s: %w", w.Path, err)
		}
		if err := f.parse(data, &s); err != nil {
			return CgroupSample{}, fmt.Errorf("sample cgroup %s: %w", w.Path, err)
		}
		s.Known |= f.field
	}
	if missing {
		// Only now pay for a stat: tell "controller not enabled" from
		// "cgroup removed".
		if _, err := os.Stat(w.Path); err != nil {
			return CgroupSample{}, fmt.Errorf("sample cgroup %s: %w", w.Path, err)
		}
	}
	return s, nil
}

// parseCPUStat reads usage_usec from cpu.stat ("usage_usec 123" lines).
func parseCPUStat(data []byte, s *CgroupSample) error {
	for line := range strings.Lines(string(data)) {
		key, val, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || key != "usage_usec" {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(val), 10, 64)
		if err != nil {
			return fmt.Errorf("parse cpu.stat usage_usec: %w", err)
		}
		s.CPUUsageUsec = n
		return nil
	}
	return errors.New("parse cpu.stat: no usage_usec")
}

// parseMemoryCurrent reads memory.current: one number of bytes.
func parseMemoryCurrent(data []byte, s *CgroupSample) error {
	n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return fmt.Errorf("parse memory.current: %w", err)
	}
	s.MemoryBytes = n
	return nil
}

// parseIOStat sums rbytes and wbytes over the devices of io.stat, one line a
// device: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0". Other keys
// (and new ones a later kernel adds) are ignored. An empty file is a cgroup
// that has done no IO yet.
func parseIOStat(data []byte, s *CgroupSample) error {
	var rd, wr uint64
	for line := range strings.Lines(string(data)) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		for _, kv := range fields[1:] {
			key, val, ok := strings.Cut(kv, "=")
			if !ok || (key != "rbytes" && key != "wbytes") {
				continue
			}
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return fmt.Errorf("parse io.stat %s of device %s: %w", key, fields[0], err)
			}
			if key == "rbytes" {
				rd += n
			} else {
				wr += n
			}
		}
	}
	s.IOReadBytes, s.IOWriteBytes = rd, wr
	return nil
}

// Rates are a worker cgroup's usage per second of wall time between two
// samples. A rate that cannot be known (field unknown on either side, a
// counter that went down, no time elapsed) is 0.
type Rates struct {
	CPUPct     float64 // 100 is one core busy for the whole interval
	IOReadMBs  float64 // MiB read per second
	IOWriteMBs float64 // MiB written per second
}

// RatesBetween computes the rates from prev (taken at prevAt) to cur (taken
// at curAt). It divides by the actual wall time, so a late tick does not
// inflate the rates. A counter lower in cur than in prev means the cgroup was
// removed and made again (a restarted worker): that rate is 0 for this
// interval, not negative and not a wrapped-around huge number.
func RatesBetween(prev, cur CgroupSample, prevAt, curAt time.Time) Rates {
	wall := curAt.Sub(prevAt).Seconds()
	if wall <= 0 {
		return Rates{}
	}
	var r Rates
	both := prev.Known & cur.Known
	if both.Has(CgroupCPU) {
		r.CPUPct = perSecond(prev.CPUUsageUsec, cur.CPUUsageUsec, wall) / 1e6 * 100
	}
	if both.Has(CgroupIO) {
		r.IOReadMBs = perSecond(prev.IOReadBytes, cur.IOReadBytes, wall) / bytesPerMiB
		r.IOWriteMBs = perSecond(prev.IOWriteBytes, cur.IOWriteBytes, wall) / bytesPerMiB
	}
	return r
}

// perSecond is the counter's increase per second, 0 if it went down.
func perSecond(prev, cur uint64, wall float64) float64 {
	if cur < prev {
		return 0
	}
	return float64(cur-prev) / wall
}

// WorkerCgroupStats is one worker's figures from its cgroup.
type WorkerCgroupStats struct {
	Group      string
	Instance   string
	Path       string
	PIDs       []int32 // sorted; of the worker cgroup and its descendants
	CPUPct     float64 // 100 is one core
	RSSMB      uint64  // memory.current in MiB (page cache included)
	IOReadMBs  float64
	IOWriteMBs float64
	// Known says which figures the cgroup provided; for the others the
	// caller falls back to per-process figures.
	Known CgroupFields
}

// CgroupTracker turns cgroup samples into per-worker stats, keeping each
// worker's previous sample for its rates. It starts no goroutines and reads
// no clock: the caller passes the time of each tick. Not safe for concurrent
// use: one collector calls it once a tick.
type CgroupTracker struct {
	reader CgroupReader
	prev   map[string]cgroupPoint // by cgroup path
}

type cgroupPoint struct {
	sample CgroupSample
	at     time.Time
}

// NewCgroupTracker returns a tracker with no history: each worker's first
// Collect has zero rates.
func NewCgroupTracker(r CgroupReader) *CgroupTracker {
	return &CgroupTracker{reader: r, prev: make(map[string]cgroupPoint)}
}

// Collect samples every worker cgroup at now, in Workers' order.
// A cgroup with no processes is no running worker (left behind by one that
// exited, or made just before its process starts) and is left out, as is one
// that vanished mid-read. Workers that could not be read are named in the
// error, beside the stats of all the others. The history of workers not seen
// this call is dropped, so a worker that comes back starts afresh.
func (t *CgroupTracker) Collect(now time.Time) ([]WorkerCgroupStats, error) {
	workers, err := t.reader.Workers()
	errs := []error{err}
	seen := make(map[string]bool, len(workers))
	out := make([]WorkerCgroupStats, 0, len(workers))
	for _, w := range workers {
		if len(w.PIDs) == 0 {
			continue
		}
		s, err := t.reader.Sample(w)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("collect worker %s/%s: %w", w.Group, w.Instance, err))
			continue
		}
		var r Rates
		if p, ok := t.prev[w.Path]; ok {
			r = RatesBetween(p.sample, s, p.at, now)
		}
		t.prev[w.Path] = cgroupPoint{sample: s, at: now}
		seen[w.Path] = true
		out = append(out, WorkerCgroupStats{
			Group:      w.Group,
			Instance:   w.Instance,
			Path:       w.Path,
			PIDs:       w.PIDs,
			CPUPct:     r.CPUPct,
			RSSMB:      s.MemoryBytes / bytesPerMiB,
			IOReadMBs:  r.IOReadMBs,
			IOWriteMBs: r.IOWriteMBs,
			Known:      s.Known,
		})
	}
	for path := range t.prev {
		if !seen[path] {
			delete(t.prev, path)
		}
	}
	return out, errors.Join(errs...)
}
