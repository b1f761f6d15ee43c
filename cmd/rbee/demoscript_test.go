package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemoScript_FailsLoudly: scripts/demo.sh with a node's port taken says
// which node failed and why, and exits non-zero, instead of "cluster
// running"; it leaves none of its nodes running.
func TestDemoScript_FailsLoudly(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("the script builds rbee with go, which is not on PATH")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0") // node b's HTTP port
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	hp := taken.Addr().(*net.TCPAddr).Port
	gports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	script, _ := filepath.Abs(filepath.Join("..", "..", "scripts", "demo.sh"))
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(envWithoutRbee(), "RBEE_DEMO_HTTP_PORT="+strconv.Itoa(hp-1), "RBEE_DEMO_GOSSIP_PORT="+strconv.Itoa(gports[0]))
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Contains(string(out), "cluster running") || !strings.Contains(string(out), "demo: node b exited") ||
		!strings.Contains(string(out), "address already in use") {
		t.Fatalf("demo.sh with b's port taken: %v\n%s", err, out)
	}
	// Its nodes are gone with it.
	if ps := procsOf(os.TempDir()); len(ps) > 0 {
		for _, pid := range ps {
			b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
			if strings.Contains(string(b), strconv.Itoa(hp-1)) {
				t.Errorf("a demo node is still running: pid %d", pid)
			}
		}
	}
}
