// Package netlab builds small networks of Linux network namespaces for fault
// tests: every host is a namespace with its own address on one bridge, and
// a test can pull a host's cable (the link goes down: packets vanish, no
// connection is reset), plug it back, and capture what crosses the bridge.
//
// It needs root and iproute2 (tcpdump for captures). Tests call New, which
// skips the test with the reason when the machine cannot do it, unless
// RBEE_REQUIRE_NETNS is set (CI runs as root and sets it), then it fails.
//
// It is imported by tests only. Everything it creates is removed when the
// test ends.
package netlab

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Lab is one bridge and the hosts on it.
type Lab struct {
	tb     testing.TB
	id     string
	bridge string
	prefix string // "10.x.y."

	mu    sync.Mutex
	hosts []*Host
}

// Host is one network namespace on the lab's bridge.
type Host struct {
	Name string
	NS   string
	IP   string
	veth string // the bridge end of its cable
	lab  *Lab
}

var (
	probeOnce sync.Once
	probeErr  error
)

// Available says why this machine cannot build labs, or nil.
func Available() error {
	probeOnce.Do(func() {
		if os.Geteuid() != 0 {
			probeErr = errors.New("network namespaces need root")
			return
		}
		if _, err := exec.LookPath("ip"); err != nil {
			probeErr = errors.New("iproute2's ip is not installed (apt-get install iproute2)")
			return
		}
		ns := "rbee-probe-" + randomID()
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			probeErr = fmt.Errorf("ip netns add: %v: %s", err, out)
			return
		}
		_ = exec.Command("ip", "netns", "del", ns).Run()
	})
	return probeErr
}

// New builds an empty lab, or skips tb with the reason this machine cannot.
func New(tb testing.TB) *Lab {
	tb.Helper()
	if err := Available(); err != nil {
		if os.Getenv("RBEE_REQUIRE_NETNS") != "" {
			tb.Fatalf("RBEE_REQUIRE_NETNS is set, but: %v", err)
		}
		tb.Skipf("skipping fault test: %v", err)
	}
	id := randomID()
	b1, _ := rand.Int(rand.Reader, big.NewInt(100))
	b2, _ := rand.Int(rand.Reader, big.NewInt(250))
	l := &Lab{tb: tb, id: id, bridge: "rbr" + id, prefix: fmt.Sprintf("10.%d.%d.", 150+b1.Int64(), 1+b2.Int64())}
	tb.Cleanup(l.close)
	l.run("ip", "link", "add", l.bridge, "type", "bridge")
	l.run("ip", "link", "set", l.bridge, "up")
	// The test process reaches the hosts through the bridge's address.
	l.run("ip", "addr", "add", l.prefix+"254/24", "dev", l.bridge)
	return l
}

func randomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Host adds a namespace named name with the next address on the bridge.
func (l *Lab) Host(name string) *Host {
	l.tb.Helper()
	l.mu.Lock()
	i := len(l.hosts) + 1
	h := &Host{Name: name, NS: fmt.Sprintf("rbee-%s-%d", l.id, i), IP: fmt.Sprintf("%s%d", l.prefix, i), veth: fmt.Sprintf("rv%s%d", l.id, i), lab: l}
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	l.run("ip", "netns", "add", h.NS)
	l.run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
	l.run("ip", "link", "set", h.veth, "master", l.bridge, "up")
	l.run("ip", "netns", "exec", h.NS, "ip", "addr", "add", h.IP+"/24", "dev", "eth0")
	l.run("ip", "netns", "exec", h.NS, "ip", "link", "set", "eth0", "up")
	l.run("ip", "netns", "exec", h.NS, "ip", "link", "set", "lo", "up")
	return h
}

// HostAddr is the test process's own address on the bridge.
func (l *Lab) HostAddr() string { return l.prefix + "254" }

// Cut pulls h's cable: nothing it sends arrives and nothing reaches it, with
// no reset or error on either side, as when a switch port or machine dies.
func (h *Host) Cut() { h.lab.run("ip", "link", "set", h.veth, "down") }

// Heal plugs h's cable back in.
func (h *Host) Heal() { h.lab.run("ip", "link", "set", h.veth, "up") }

// Command runs name inside h's namespace. The process is killed if the test
// binary dies.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Firewall adds an iptables rule in h's namespace (args as after
// "iptables"), for faults a pulled cable cannot make: one direction only, one
// protocol, one peer, a REJECT that answers for a live process. The rules go
// with the namespace. Without iptables the test skips, or fails under
// RBEE_REQUIRE_NETNS.
func (h *Host) Firewall(args ...string) {
	h.lab.tb.Helper()
	if _, err := exec.LookPath("iptables"); err != nil {
		if os.Getenv("RBEE_REQUIRE_NETNS") != "" {
			h.lab.tb.Fatal("iptables is not installed (apt-get install iptables)")
		}
		h.lab.tb.Skip("skipping fault test: iptables is not installed (apt-get install iptables)")
	}
	h.lab.run(append([]string{"ip", "netns", "exec", h.NS, "iptables"}, args...)...)
}

// Addr is host:port on h.
func (h *Host) Addr(port int) string { return fmt.Sprintf("%s:%d", h.IP, port) }

func (l *Lab) run(args ...string) {
	l.tb.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		l.tb.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (l *Lab) close() {
	l.mu.Lock()
	hosts := l.hosts
	l.mu.Unlock()
	for _, h := range hosts {
		// Deleting the namespace deletes its end of the cable, which
		// takes the bridge end with it.
		_ = exec.Command("ip", "netns", "del", h.NS).Run()
	}
	_ = exec.Command("ip", "link", "del", l.bridge).Run()
}

// Capture records what crosses the bridge between hosts (the test process's
// own traffic left out) until Stop.
type Capture struct {
	cmd      *exec.Cmd
	path     string
	drained  chan struct{} // closed when tcpdump's stderr is read to the end
	stopOnce sync.Once
}

// Capture starts tcpdump on the bridge, or fails the test if it cannot.
func (l *Lab) Capture() *Capture {
	l.tb.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		if os.Getenv("RBEE_REQUIRE_NETNS") != "" {
			l.tb.Fatal("tcpdump is not installed (apt-get install tcpdump)")
		}
		l.tb.Skip("skipping capture: tcpdump is not installed (apt-get install tcpdump)")
	}
	c := &Capture{path: filepath.Join(l.tb.TempDir(), "bridge.pcap"), drained: make(chan struct{})}
	// -U: write each packet as it comes, so Stop loses nothing;
	// -s 0: whole packets.
	c.cmd = exec.Command("tcpdump", "-Z", "root", "-i", l.bridge, "-U", "-s", "0", "-w", c.path, "not", "host", l.HostAddr())
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		l.tb.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		l.tb.Fatalf("start tcpdump: %v", err)
	}
	l.tb.Cleanup(func() { c.Stop() })
	// tcpdump says when it listens; before that, packets are lost.
	listening := make(chan struct{})
	var said strings.Builder
	go func() {
		defer close(c.drained)
		ready := listening
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			switch {
			case ready == nil:
			case strings.Contains(sc.Text(), "listening on"):
				close(ready)
				ready = nil
			default:
				said.WriteString(sc.Text() + "\n")
			}
		}
	}()
	select {
	case <-listening:
	case <-c.drained:
		l.tb.Fatalf("tcpdump exited: %s", said.String())
	case <-time.After(10 * time.Second):
		l.tb.Fatal("tcpdump did not start listening within 10 s")
	}
	return c
}

// Size is how many bytes the capture holds so far.
func (c *Capture) Size() int64 {
	fi, err := os.Stat(c.path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Stop ends the capture and returns the raw capture file: whatever crossed
// the wire between hosts, headers and payloads.
func (c *Capture) Stop() []byte {
	c.stopOnce.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		<-c.drained
		_ = c.cmd.Wait()
	})
	b, _ := os.ReadFile(c.path)
	return b
}
