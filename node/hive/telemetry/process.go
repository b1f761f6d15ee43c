package telemetry

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"time"

	"github.com/shirou/gopsutil/v3/process"
)

// ProcStats is one worker's process figures, summed over its pids.
type ProcStats struct {
	Alive   int   // how many of the worker's pids were alive
	MainPID int32 // the oldest live pid (the worker's own process, usually)
	// CPUPct is the CPU used since the previous sample: 100 is one core.
	CPUPct   float64
	RSSBytes uint64
	// ReadBps and WriteBps are storage bytes per second since the previous
	// sample (/proc/<pid>/io read_bytes and write_bytes).
	ReadBps, WriteBps float64
	// IOUnknown: some pid's /proc/<pid>/io was unreadable (another user's
	// process and no root), so the IO rates are partial.
	IOUnknown bool
	Uptime    time.Duration // since the oldest live pid started
	Cmdline   []string      // of MainPID, read once per process
}

// ProcSampler measures processes with gopsutil from one tick to the next. It
// keeps a handle per pid with what never changes (start time, command line),
// so a tick reads only /proc/<pid>/stat, statm and io. Rates are per second of
// wall time between the two samples, so a late tick gives the right figure.
// Not safe for concurrent use.
type ProcSampler struct {
	procs map[int32]*procState
}

type procState struct {
	p        *process.Process
	created  int64 // ms since the epoch; a different value means pid reuse
	cmdline  []string
	cpuSecs  float64
	rd, wr   uint64
	ioOK     bool
	at       time.Time
	lastTick time.Time
}

// NewProcSampler returns a sampler with no history: every process's first
// sample has zero rates.
func NewProcSampler() *ProcSampler {
	// gopsutil re-reads /proc/stat for the boot time on every Times call
	// (a fifth of a sample's cost); the boot time cannot change while we
	// run, so its process-wide cache is safe to turn on.
	process.EnableBootTimeCache(true)
	return &ProcSampler{procs: make(map[int32]*procState)}
}

// ProcQuery is one worker to measure.
type ProcQuery struct {
	PIDs []int32
	// IdentityOnly: the caller has CPU, memory and IO from the worker's
	// cgroup, so read only what is cached (start time, command line) and
	// check the pid is alive.
	IdentityOnly bool
}

// Sample measures each worker at now, and forgets processes that no worker
// listed.
func (s *ProcSampler) Sample(ctx context.Context, workers []ProcQuery, now time.Time) []ProcStats {
	out := make([]ProcStats, len(workers))
	for i, q := range workers {
		if q.IdentityOnly {
			out[i] = s.identity(ctx, q.PIDs, now)
		} else {
			out[i] = s.worker(ctx, q.PIDs, now)
		}
	}
	for pid, st := range s.procs {
		if !st.lastTick.Equal(now) {
			delete(s.procs, pid)
		}
	}
	return out
}

func (s *ProcSampler) worker(ctx context.Context, pids []int32, now time.Time) ProcStats {
	var ws ProcStats
	oldest := int64(0)
	for _, pid := range pids {
		st, ok := s.state(ctx, pid)
		if !ok {
			continue
		}
		times, err := st.p.TimesWithContext(ctx)
		if err != nil {
			// Exited since the list was made.
			delete(s.procs, pid)
			continue
		}
		ws.alive(pid, st, &oldest)
		if mem, err := st.p.MemoryInfoWithContext(ctx); err == nil {
			ws.RSSBytes += mem.RSS
		}
		cpuSecs := times.User + times.System
		io, ioErr := st.p.IOCountersWithContext(ctx)
		if ioErr != nil {
			ws.IOUnknown = true
		}
		if wall := now.Sub(st.at).Seconds(); !st.at.IsZero() && wall > 0 {
			// A counter that went down means a reused pid slipped past the
			// start-time check; count nothing rather than a negative.
			if d := cpuSecs - st.cpuSecs; d > 0 {
				ws.CPUPct += d / wall * 100
			}
			if ioErr == nil && st.ioOK {
				if io.ReadBytes >= st.rd {
					ws.ReadBps += float64(io.ReadBytes-st.rd) / wall
				}
				if io.WriteBytes >= st.wr {
					ws.WriteBps += float64(io.WriteBytes-st.wr) / wall
				}
			}
		}
		st.cpuSecs, st.at, st.lastTick = cpuSecs, now, now
		st.ioOK = ioErr == nil
		if st.ioOK {
			st.rd, st.wr = io.ReadBytes, io.WriteBytes
		}
	}
	ws.setUptime(oldest, now)
	return ws
}

// identity reports which pids are alive, the oldest one, its command line and
// uptime, without reading the counters.
func (s *ProcSampler) identity(ctx context.Context, pids []int32, now time.Time) ProcStats {
	var ws ProcStats
	oldest := int64(0)
	for _, pid := range pids {
		st, ok := s.state(ctx, pid)
		if !ok {
			continue
		}
		if !pidAlive(pid) {
			delete(s.procs, pid)
			continue
		}
		st.lastTick = now
		ws.alive(pid, st, &oldest)
	}
	ws.setUptime(oldest, now)
	return ws
}

// alive counts a live pid and keeps the oldest one as the worker's main
// process: its command line names the model, its start time the uptime.
func (ws *ProcStats) alive(pid int32, st *procState, oldest *int64) {
	ws.Alive++
	if *oldest == 0 || st.created < *oldest {
		*oldest, ws.MainPID, ws.Cmdline = st.created, pid, st.cmdline
	}
}

func (ws *ProcStats) setUptime(oldest int64, now time.Time) {
	if oldest > 0 {
		ws.Uptime = max(0, now.Sub(time.UnixMilli(oldest)))
	}
}

// pidAlive is one kill(pid, 0): gopsutil's IsRunning re-reads and parses
// /proc/<pid>/stat, a fifth of a tick's cost with 16 workers. EPERM means the
// process exists but belongs to another user.
func pidAlive(pid int32) bool {
	err := syscall.Kill(int(pid), 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// state returns the cached handle for pid, making one for a new pid and
// reading then what never changes: its start time and command line. A pid
// reused within one tick keeps the old handle's command line until the worker
// list drops it; its counters going backwards count as zero, not negative.
func (s *ProcSampler) state(ctx context.Context, pid int32) (*procState, bool) {
	if st := s.procs[pid]; st != nil {
		return st, true
	}
	p, err := process.NewProcessWithContext(ctx, pid)
	if err != nil {
		return nil, false
	}
	created, err := p.CreateTimeWithContext(ctx)
	if err != nil {
		return nil, false
	}
	cmd, _ := p.CmdlineSliceWithContext(ctx)
	st := &procState{p: p, created: created, cmdline: slices.Clip(cmd)}
	s.procs[pid] = st
	return st, true
}
