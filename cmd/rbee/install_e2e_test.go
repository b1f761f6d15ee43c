package main

// `rbee node install` against real OpenSSH servers (Debian's openssh-server),
// each in a network namespace with its own host key and one authorized key,
// installing into a temporary prefix (the namespaces share this machine's
// file system) with no systemd: the detached path.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/rbee/rbee/internal/netlab"
	"github.com/rbee/rbee/internal/testutil"
)

// sshdBinary is OpenSSH's server, or "" with why not.
func sshdBinary() (string, string) {
	if p, err := exec.LookPath("sshd"); err == nil {
		return p, ""
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err == nil {
		return "/usr/sbin/sshd", ""
	}
	return "", "sshd is not installed (apt-get install openssh-server)"
}

// sshKey makes an ed25519 key: its OpenSSH private key file and public key.
func sshKey(tb testing.TB, file string) ssh.PublicKey {
	tb.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		tb.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return sp
}

// startSSHD runs sshd in h on port 22, letting in root with authorized, and
// returns its host key.
func startSSHD(tb testing.TB, nc *netCluster, h *netlab.Host, sshd string, authorized ssh.PublicKey) ssh.PublicKey {
	tb.Helper()
	dir := filepath.Join(nc.dir, "sshd-"+h.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	hostKey := sshKey(tb, filepath.Join(dir, "host_key"))
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(authorized), 0o600); err != nil {
		tb.Fatal(err)
	}
	conf := fmt.Sprintf(`ListenAddress %s:22
HostKey %s/host_key
AuthorizedKeysFile %s/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
`, h.IP, dir, dir)
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	// sshd's privilege separation folder; Debian's package creates it at
	// boot only.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		tb.Fatal(err)
	}
	p := &proc{name: h.Name + "-sshd"}
	if err := nc.launch(p, h.Command(sshd, "-D", "-e", "-f", cfg)); err != nil {
		tb.Fatal(err)
	}
	testutil.Every(20*time.Millisecond).Eventually(tb, 10*time.Second, "sshd in "+h.Name+" answers", func() error {
		if p.Exited() {
			return testutil.Stop(fmt.Errorf("sshd exited: %v\n%s", p.Err(), p.log()))
		}
		c, err := net.DialTimeout("tcp", h.Addr(22), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 4)
		if _, err := c.Read(b); err != nil || string(b) != "SSH-" {
			return fmt.Errorf("banner %q: %v", b, err)
		}
		return nil
	})
	return hostKey
}

// runInstallCLI runs the CLI with no SSH agent, for up to limit.
func runInstallCLI(limit time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, rbeeBin, args...)
	cmd.Env = append(envWithoutRbee(), "SSH_AUTH_SOCK=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestInstall_OverSSH: `rbee node install` of three machines in parallel,
// with no address of a peer given, gives one cluster; running it again
// upgrades a node in place; uninstall stops and removes them. A wrong host
// key, an unknown one, a wrong user key and --service systemd on a host
// without systemd each fail with what went wrong.
func TestInstall_OverSSH(t *testing.T) {
	sshd, why := sshdBinary()
	if sshd == "" {
		if os.Getenv("RBEE_REQUIRE_NETNS") != "" {
			t.Fatalf("RBEE_REQUIRE_NETNS is set, but %s", why)
		}
		t.Skip("skipping: " + why)
	}
	nc := newNetCluster(t)
	dir := t.TempDir()
	id := filepath.Join(dir, "id_ed25519")
	userKey := sshKey(t, id)
	var hosts []*netlab.Host
	hostKeys := map[string]ssh.PublicKey{}
	for _, name := range []string{"a", "b", "c"} {
		h := lanHost(nc, name)
		hosts = append(hosts, h)
		hostKeys[h.IP] = startSSHD(t, nc, h, sshd, userKey)
	}
	prefix := filepath.Join(dir, "root-%h")
	known := filepath.Join(dir, "known_hosts")
	common := []string{"--identity", id, "--ssh-config", "", "--known-hosts", known, "--prefix", prefix,
		"--cluster-key-file", nc.keyFile, "--binary", rbeeBin, "--timeout", "60s"}
	install := func(extra []string, targets ...string) (string, error) {
		args := append(append(append([]string{"node", "install"}, common...), extra...), targets...)
		return runInstallCLI(90*time.Second, append(args, "--", "--name", "%h", "--log-level", nc.logLvl)...)
	}
	// Whatever happens, no installed node outlives the test.
	t.Cleanup(func() {
		for _, h := range hosts {
			if b, err := os.ReadFile(filepath.Join(strings.ReplaceAll(prefix, "%h", h.IP), "var/lib/rbee/rbee.pid")); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	a := "root@" + hosts[0].IP

	t.Run("unknown host key", func(t *testing.T) {
		out, err := install(nil, a)
		if err == nil || !strings.Contains(out, "unknown host key for "+hosts[0].IP) || !strings.Contains(out, "--accept-new-host-key") {
			t.Fatalf("want an unknown host key refused: %v\n%s", err, out)
		}
	})
	t.Run("wrong host key", func(t *testing.T) {
		other := sshKey(t, filepath.Join(t.TempDir(), "other"))
		wrong := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(wrong, []byte(fmt.Sprintln(knownHostsLine(hosts[0].IP, other))), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runInstallCLI(30*time.Second, "node", "install", "--identity", id, "--ssh-config", "", "--known-hosts", wrong,
			"--accept-new-host-key", "--prefix", prefix, "--cluster-key-file", nc.keyFile, a)
		if err == nil || !strings.Contains(out, "HOST KEY MISMATCH for "+hosts[0].IP) || !strings.Contains(out, wrong+":1") {
			t.Fatalf("want a changed host key refused, even with --accept-new-host-key: %v\n%s", err, out)
		}
	})
	t.Run("wrong user key", func(t *testing.T) {
		stranger := filepath.Join(t.TempDir(), "id_stranger")
		sshKey(t, stranger)
		out, err := runInstallCLI(30*time.Second, "node", "install", "--identity", stranger, "--ssh-config", "", "--known-hosts", known,
			"--accept-new-host-key", "--prefix", prefix, "--cluster-key-file", nc.keyFile, a)
		if err == nil || !strings.Contains(out, "refused every key offered ("+stranger+")") || !strings.Contains(out, "authorized_keys") {
			t.Fatalf("want the login refused, naming the key: %v\n%s", err, out)
		}
	})
	t.Run("no systemd", func(t *testing.T) {
		out, err := install([]string{"--accept-new-host-key", "--service", "systemd"}, a)
		if err == nil || !strings.Contains(out, "does not run systemd") {
			t.Fatalf("want --service systemd refused on a host without it: %v\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(strings.ReplaceAll(prefix, "%h", hosts[0].IP), "etc/rbee/key")); err == nil {
			t.Fatal("files were copied before the check failed")
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	var targets []string
	for _, h := range hosts {
		targets = append(targets, "root@"+h.IP)
	}
	start := time.Now()
	out, err := install([]string{"--accept-new-host-key"}, targets...)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	ps := installedProcs(hosts)
	waitOneCluster(t, nc, ps)
	took := time.Since(start)
	t.Logf("rbee node install of three hosts in parallel to all three serving in one cluster: %v\n%s", took.Round(time.Millisecond), out)
	for _, h := range hosts {
		if !strings.Contains(out, "root@"+h.IP+"  in the cluster as \""+h.IP+"\"") {
			t.Errorf("no line saying %s is in the cluster:\n%s", h.IP, out)
		}
		root := strings.ReplaceAll(prefix, "%h", h.IP)
		fi, err := os.Stat(filepath.Join(root, "etc/rbee/key"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: key file %v, %v", h.IP, fi, err)
		}
	}
	kh, _ := os.ReadFile(known)
	for ip, k := range hostKeys {
		if !strings.Contains(string(kh), knownHostsLine(ip, k)) {
			t.Errorf("known_hosts lacks %s's key:\n%s", ip, kh)
		}
	}

	// Again on a: an upgrade in place, the node restarted, the cluster whole.
	pidFile := filepath.Join(strings.ReplaceAll(prefix, "%h", hosts[0].IP), "var/lib/rbee/rbee.pid")
	before, _ := os.ReadFile(pidFile)
	if out, err := install(nil, a); err != nil {
		t.Fatalf("install again: %v\n%s", err, out)
	}
	after, _ := os.ReadFile(pidFile)
	if len(before) == 0 || bytes.Equal(before, after) {
		t.Errorf("install again did not restart the node: pid %q then %q", before, after)
	}
	waitOneCluster(t, nc, ps)

	out, err = runInstallCLI(60*time.Second, append(append([]string{"node", "uninstall"}, "--identity", id, "--ssh-config", "", "--known-hosts", known, "--prefix", prefix), targets...)...)
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	for _, h := range hosts {
		root := strings.ReplaceAll(prefix, "%h", h.IP)
		for _, f := range []string{"usr/local/bin/rbee", "etc/rbee/key", "var/lib/rbee/rbee.pid"} {
			if _, err := os.Stat(filepath.Join(root, f)); err == nil {
				t.Errorf("%s: %s still there after uninstall", h.IP, f)
			}
		}
		if c, err := net.DialTimeout("tcp", h.Addr(netHTTPPort), time.Second); err == nil {
			c.Close()
			t.Errorf("%s: the node still answers after uninstall", h.IP)
		}
	}
}

func knownHostsLine(ip string, k ssh.PublicKey) string {
	return strings.TrimSpace(ip + " " + string(ssh.MarshalAuthorizedKey(k)))
}

// installedProcs names the installed nodes for the harness's polls (the
// test did not start them: no process to watch).
func installedProcs(hosts []*netlab.Host) []*proc {
	var ps []*proc
	for _, h := range hosts {
		ps = append(ps, &proc{name: h.IP, gossipAddr: h.Addr(netGossipPort), httpAddr: h.Addr(netHTTPPort)})
	}
	return ps
}

// waitOneCluster waits until every node sees all of ps alive and they name
// one queen.
func waitOneCluster(tb testing.TB, nc *netCluster, ps []*proc) {
	tb.Helper()
	var want []string
	for _, p := range ps {
		want = append(want, p.name)
	}
	slices.Sort(want)
	testutil.Every(20*time.Millisecond).Eventually(tb, 30*time.Second, "one cluster of "+strings.Join(want, ","), func() error {
		queen := ""
		for _, p := range ps {
			got, err := membersWithKey(nc.hc, p, nc.key)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("%s sees %v", p.name, got)
			}
			h, err := healthWithKey(nc.hc, p, nc.key)
			if err != nil {
				return err
			}
			if h.Queen == "" || (queen != "" && h.Queen != queen) {
				return fmt.Errorf("%s names queen %q, another %q", p.name, h.Queen, queen)
			}
			queen = h.Queen
		}
		return nil
	})
}
