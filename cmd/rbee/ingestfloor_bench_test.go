package main

import (
	"bufio"
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"
)

// BenchmarkIngestFloor is BenchmarkIngest's workload (1000 hives × 8
// workers reporting once a second, 10 batch feed readers) against
// testdata/ingestfloor instead of a queen: a server that only reads each
// report whole with the same WebSocket library and writes what it read to
// the readers every 50 ms. Its CPU is what the transport alone costs on
// this machine (reads, wake-ups, frames, writes), the floor under the
// queen's figure; BenchmarkIngest's queen_cores minus this is what rbee's
// own work (decoding, the registry, the scheduler, the feed's events)
// costs.
func BenchmarkIngestFloor(b *testing.B) {
	raiseFDLimit(b, 4096)
	const sessions = 1000
	dir := b.TempDir()
	bin := filepath.Join(dir, "ingestfloor")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/ingestfloor").CombinedOutput(); err != nil {
		b.Fatalf("build ingestfloor: %v\n%s", err, out)
	}
	for _, phase := range []string{phaseInPhase, phaseSpread} {
		b.Run("phase="+phase, func(b *testing.B) {
			for b.Loop() {
				ingestFloor(b, bin, sessions, phase)
			}
		})
	}
}

func ingestFloor(b *testing.B, bin string, sessions int, phase string) {
	cmd := exec.Command(bin)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	addr = strings.TrimSpace(addr)
	cores := floorCores(b, cmd.Process.Pid, addr, sessions, phase)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	b.ReportMetric(cores, "floor_cores")
	b.Logf("%d sessions (%s), %d feed readers (batch): the transport alone used %.3f cores", sessions, phase, ingestSubscribers, cores)
}

func floorCores(b *testing.B, pid int, addr string, sessions int, phase string) float64 {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	conns := make([]*websocket.Conn, sessions)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(ingestDialers)
	for i := range conns {
		g.Go(func() error {
			c, _, err := websocket.Dial(gctx, "ws://"+addr+"/hive", nil)
			conns[i] = c
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("dial: %v", err)
	}
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	var writeErrs atomic.Int64
	for i, c := range conns {
		write := func(ctx context.Context, msg []byte) error { return c.Write(ctx, websocket.MessageText, msg) }
		wg.Go(func() { reportEverySecond(ctx, phase, i, sessions, write, &writeErrs) })
	}
	var got atomic.Int64
	for range ingestSubscribers {
		c, _, err := websocket.Dial(ctx, "ws://"+addr+"/feed", nil)
		if err != nil {
			b.Fatalf("dial feed: %v", err)
		}
		c.SetReadLimit(16 << 20)
		wg.Go(func() {
			defer c.CloseNow()
			var buf bytes.Buffer
			for {
				_, r, err := c.Reader(ctx)
				if err != nil {
					return
				}
				buf.Reset()
				if _, err := buf.ReadFrom(r); err != nil {
					return
				}
				got.Add(int64(bytes.Count(buf.Bytes(), []byte(`"hive_id"`))))
			}
		})
	}
	<-time.After(ingestWarmup) // a fixed settling time, as BenchmarkIngest's
	ticks := clockTicks()
	cpu0, err := procCPUTicks(pid)
	if err != nil {
		b.Fatal(err)
	}
	got0, t0 := got.Load(), time.Now()
	<-time.After(ingestWindow)
	cpu1, err := procCPUTicks(pid)
	if err != nil {
		b.Fatal(err)
	}
	wall := time.Since(t0)
	if n := writeErrs.Load(); n > 0 {
		b.Fatalf("%d hive writes failed", n)
	}
	perReader := float64(got.Load()-got0) / ingestSubscribers / wall.Seconds()
	if perReader < 0.9*float64(sessions) {
		b.Fatalf("each feed reader got %.0f reports/s, want about %d", perReader, sessions)
	}
	return float64(cpu1-cpu0) / ticks / wall.Seconds()
}
