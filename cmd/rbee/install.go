package main

// `rbee node install` and `rbee node uninstall`: set a machine up as a node
// over SSH, from a laptop, several machines at once. What goes where (under
// --prefix, default /):
//
//	usr/local/bin/rbee        this binary (or --binary), replaced atomically
//	etc/rbee/key              the cluster key, 0600
//	etc/rbee/rbee.toml        the node flags given after --, as a --config file
//	var/lib/rbee/             the data dir (the members the node knew)
//	/etc/systemd/system/rbee.service   deploy/systemd/rbee.service, pointed at them
//	var/lib/rbee/rbee.pid, var/log/rbee.log   without systemd: the detached node
//
// Running it again upgrades in place: the files are replaced and the node
// restarted (it leaves the cluster gracefully and rejoins).

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/wsapi"
)

// installUnit is deploy/systemd/rbee.service (a copy: go:embed cannot reach
// outside this package; TestInstallUnitIsDeploys keeps them equal).
//
//go:generate cp ../../deploy/systemd/rbee.service install_rbee.service
//go:embed install_rbee.service
var installUnit string

// Service managers `rbee node install` can leave the node to.
const (
	serviceAuto     = "auto"
	serviceSystemd  = "systemd"
	serviceDetached = "detached"
)

func sshFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "prefix", Value: "/", Usage: "install under this folder instead of / (%h: the host's name as given), e.g. to try it out; the systemd unit still goes to /etc/systemd/system"},
		&cli.BoolFlag{Name: "accept-new-host-key", Usage: "trust a host whose key is not in known_hosts yet, and add it (a changed key is still refused)"},
		&cli.StringSliceFlag{Name: "identity", Aliases: []string{"i"}, Usage: "private key file to log in with, besides the SSH agent and ~/.ssh/config's IdentityFile"},
		&cli.StringFlag{Name: "ssh-config", Value: "~/.ssh/config", Usage: "ssh_config file (Host, HostName, User, Port, IdentityFile, UserKnownHostsFile); empty: none"},
		&cli.StringSliceFlag{Name: "known-hosts", Usage: "known_hosts files (default: ~/.ssh/config's UserKnownHostsFile, else ~/.ssh/known_hosts)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "print every step, with the commands it would run, and change nothing"},
		&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "how long each host may take, the wait for the node to join included"},
	}
}

func nodeInstallCommand() *cli.Command {
	return &cli.Command{
		Name:  "install",
		Usage: "set machines up as nodes over SSH: copy rbee, the cluster key and a config, start the node, wait until it is in the cluster",
		Description: `Each HOST is [user@]host[:port] or an alias of ~/.ssh/config; the hosts are
installed in parallel, a line of progress each. Flags after -- are the node's
(rbee node run's), written to its config file; %h in them is the host's name
as given (without user and port).
With a cluster key and no --join, the nodes find each other on the LAN.
Running it again upgrades the node in place.

   rbee node install --cluster-key-file key gpu-1 gpu-2 root@10.0.0.3 -- --roles hive`,
		ArgsUsage: "HOST [HOST...] [-- NODE FLAGS...]",
		Flags: append(append(sshFlags(), keyFlags()...),
			&cli.StringFlag{Name: "binary", Usage: "the rbee binary to install (default: this one)"},
			&cli.StringFlag{Name: "service", Value: serviceAuto, Usage: "systemd (install deploy/'s unit), detached (start the node in the background with a pid file) or auto (systemd where the host runs it)"},
		),
		Action: runInstall,
	}
}

func nodeUninstallCommand() *cli.Command {
	return &cli.Command{
		Name:      "uninstall",
		Usage:     "stop the node rbee node install set up (it leaves the cluster) and remove what it installed",
		ArgsUsage: "HOST [HOST...]",
		Flags:     append(sshFlags(), &cli.BoolFlag{Name: "purge", Usage: "also remove the data dir"}),
		Action:    runUninstall,
	}
}

// installTarget is one HOST argument, resolved through ssh_config.
type installTarget struct {
	arg   string // as given: the progress lines' label and %h
	alias string // the host part, as ssh_config's Host lines see it
	addr  string // host:port to dial
	user  string
	ids   []string // IdentityFile entries
	known []string // UserKnownHostsFile entries
}

// parseTarget reads [user@]host[:port] and applies file's settings for host.
func parseTarget(arg, file string) (installTarget, error) {
	t := installTarget{arg: arg}
	hostport := arg
	if i := strings.LastIndex(arg, "@"); i >= 0 {
		t.user, hostport = arg[:i], arg[i+1:]
	}
	host, port := hostport, ""
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, p
	} else if strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]") {
		host = hostport[1 : len(hostport)-1]
	}
	if host == "" || strings.HasPrefix(host, "-") {
		return t, fmt.Errorf("%q: want [user@]host[:port] (node flags go after --)", arg)
	}
	t.alias = host
	cfg, err := readSSHConfig(expandHome(file), host)
	if err != nil {
		return t, err
	}
	if cfg.HostName != "" {
		host = cfg.HostName
	}
	if port == "" {
		port = cfg.Port
	}
	if port == "" {
		port = "22"
	}
	if t.user == "" {
		t.user = cfg.User
	}
	if t.user == "" {
		if u, err := user.Current(); err == nil {
			t.user = u.Username
		}
	}
	t.addr = net.JoinHostPort(host, port)
	t.ids, t.known = cfg.IdentityFiles, cfg.KnownHosts
	return t, nil
}

// splitHosts separates the hosts from the node flags after "--".
func splitHosts(args []string) (hosts, nodeArgs []string) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:]
		}
	}
	return args, nil
}

// nodeConfig turns node flags into the TOML config file of `rbee node run`,
// checked against its flags (a typo fails here, before any host is
// touched). Only the flags given are written; configFor adds the installed
// key file and data dir.
func nodeConfig(args []string) (map[string]any, error) {
	flags := nodeRunCommand().Flags
	fs := flag.NewFlagSet("node flags", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	vals := map[string]*givenValues{}
	kinds := map[string]valueKind{}
	for _, f := range flags {
		names := f.Names()
		v := &givenValues{isBool: kindOf(f) == kindBool}
		vals[names[0]], kinds[names[0]] = v, kindOf(f)
		for _, n := range names {
			fs.Var(v, n, "")
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("node flags after --: %w", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("node flags after --: %q is not a flag", fs.Arg(0))
	}
	out := map[string]any{}
	for name, v := range vals {
		if len(v.vals) == 0 {
			continue
		}
		switch name {
		case "cluster-key", "cluster-key-file":
			return nil, fmt.Errorf("node flags after --: no --%s: install copies the key given before the hosts (--cluster-key-file) and points the node at it", name)
		case "config", "print-config", "help":
			return nil, fmt.Errorf("node flags after --: no --%s: install writes the node's config file itself", name)
		}
		last := v.vals[len(v.vals)-1]
		switch kinds[name] {
		case kindList:
			out[name] = v.vals
		case kindInt:
			n, err := strconv.ParseInt(last, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("node flags after --: --%s %q: want an integer", name, last)
			}
			out[name] = n
		case kindUint:
			n, err := strconv.ParseUint(last, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("node flags after --: --%s %q: want a non-negative integer", name, last)
			}
			out[name] = n
		case kindFloat:
			n, err := strconv.ParseFloat(last, 64)
			if err != nil {
				return nil, fmt.Errorf("node flags after --: --%s %q: want a number", name, last)
			}
			out[name] = n
		case kindBool:
			b, err := strconv.ParseBool(last)
			if err != nil {
				return nil, fmt.Errorf("node flags after --: --%s=%q: want true or false", name, last)
			}
			out[name] = b
		case kindDuration:
			if _, err := time.ParseDuration(last); err != nil {
				return nil, fmt.Errorf("node flags after --: --%s %q: want a duration such as 30s", name, last)
			}
			out[name] = last
		default:
			out[name] = last
		}
	}
	return out, nil
}

// givenValues collects every value a flag is given.
type givenValues struct {
	vals   []string
	isBool bool
}

func (f *givenValues) String() string     { return strings.Join(f.vals, ",") }
func (f *givenValues) Set(s string) error { f.vals = append(f.vals, s); return nil }
func (f *givenValues) IsBoolFlag() bool   { return f.isBool }

// expandHost replaces %h with the host's name as given, in a config's
// strings.
func expandHost(cfg map[string]any, host string) map[string]any {
	out := make(map[string]any, len(cfg))
	for k, v := range cfg {
		switch v := v.(type) {
		case string:
			out[k] = strings.ReplaceAll(v, "%h", host)
		case []string:
			l := make([]string, len(v))
			for i, s := range v {
				l[i] = strings.ReplaceAll(s, "%h", host)
			}
			out[k] = l
		default:
			out[k] = v
		}
	}
	return out
}

// layout is where the installed files are on one host.
type layout struct {
	prefix                                string
	bin, etc, key, config, data, pid, log string
	unit                                  string
}

func newLayout(prefix, host string) layout {
	p := strings.ReplaceAll(prefix, "%h", host)
	if p == "" {
		p = "/"
	}
	return layout{
		prefix: p,
		bin:    path.Join(p, "usr/local/bin/rbee"),
		etc:    path.Join(p, "etc/rbee"),
		key:    path.Join(p, "etc/rbee/key"),
		config: path.Join(p, "etc/rbee/rbee.toml"),
		data:   path.Join(p, "var/lib/rbee"),
		pid:    path.Join(p, "var/lib/rbee/rbee.pid"),
		log:    path.Join(p, "var/log/rbee.log"),
		unit:   "/etc/systemd/system/rbee.service",
	}
}

// unitFor is deploy's unit pointed at the installed files: the binary, its
// config file, an optional env file, and the data dir writable when it is
// not the unit's StateDirectory.
func unitFor(l layout) string {
	var b strings.Builder
	b.WriteString("# Installed by `rbee node install` from deploy/systemd/rbee.service.\n")
	for _, line := range strings.SplitAfter(installUnit, "\n") {
		switch {
		case strings.HasPrefix(line, "ExecStart="):
			fmt.Fprintf(&b, "ExecStart=%s node run --config %s\n", l.bin, l.config)
			if l.data != "/var/lib/rbee" {
				fmt.Fprintf(&b, "ReadWritePaths=%s\n", l.data)
			}
		case strings.HasPrefix(line, "EnvironmentFile="):
			// Optional: the config file holds the flags; an env
			// file written by hand still overrides them.
			fmt.Fprintf(&b, "EnvironmentFile=-%s\n", path.Join(l.etc, "rbee.env"))
		default:
			b.WriteString(line)
		}
	}
	return b.String()
}

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// step is one thing done on a host: a shell script run there, or a file
// written.
type step struct {
	what   string
	script string
	file   *fileCopy
}

// fileCopy is a file a step writes: it travels in the tar archive batch
// sends, beside its destination, and is then moved over it (a running
// binary is replaced, not overwritten: "text file busy").
type fileCopy struct {
	data []byte
	dst  string
	mode os.FileMode
}

func (f *fileCopy) tmp() string { return f.dst + ".rbee-new" }

func copyStep(what string, data []byte, dst string, mode os.FileMode) step {
	f := &fileCopy{data: data, dst: dst, mode: mode}
	return step{what: what, file: f, script: fmt.Sprintf("chmod %o %s && mv -f %s %s", mode, shq(f.tmp()), shq(f.tmp()), shq(dst))}
}

// batch makes steps one script and its stdin, so that a host is set up in
// one SSH session (each costs a process start on the host, seconds on a
// loaded one): the files as one tar archive, unpacked beside their
// destinations, then every step's script in order.
func batch(steps []step) (string, []byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var dirs []string
	for _, s := range steps {
		if s.file == nil {
			continue
		}
		if d := path.Dir(s.file.dst); !slices.Contains(dirs, shq(d)) {
			dirs = append(dirs, shq(d))
		}
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(s.file.tmp(), "/"), Mode: int64(s.file.mode),
			Size: int64(len(s.file.data)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
			return "", nil, err
		}
		if _, err := tw.Write(s.file.data); err != nil {
			return "", nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return "", nil, err
	}
	var b strings.Builder
	b.WriteString("set -e\n")
	if len(dirs) > 0 {
		// Folders as any install makes them (0755); the files private
		// until their modes are set.
		fmt.Fprintf(&b, "(umask 022 && mkdir -p %s)\numask 077\ntar -xf - -C / --no-same-owner\n", strings.Join(dirs, " "))
	}
	for _, s := range steps {
		b.WriteString(s.script + "\n")
	}
	return b.String(), buf.Bytes(), nil
}

// errEnginesUnderSystemd refuses what would install a node that cannot
// work: the unit install writes is deploy's rbee.service, whose hardening
// (MemoryDenyWriteExecute, ProtectSystem=strict, ProtectControlGroups) the
// engines a hive starts would inherit, and CUDA, model pulls and engine
// cgroups fail under it. rbee-hive.service fits them, but depends on the
// host's models folder and cgroup layout, which install does not decide.
var errEnginesUnderSystemd = errors.New("the node flags start engines (--model, --models-dir), which fail under the rbee.service unit install writes: " +
	"install deploy/systemd/rbee-hive.service on the host by hand, or use --service detached")

// startsEngines says whether a node config makes a hive start engines of its
// own.
func startsEngines(cfg map[string]any) bool {
	_, model := cfg["model"]
	_, dir := cfg["models-dir"]
	return model || dir
}

// systemdSteps install the unit and (re)start it.
func systemdSteps(l layout) []step {
	return []step{
		copyStep("install the systemd unit "+l.unit, []byte(unitFor(l)), l.unit, 0o644),
		{what: "enable and (re)start rbee.service", script: "systemctl daemon-reload && systemctl enable --quiet rbee.service && systemctl restart rbee.service"},
	}
}

// stopDetached stops the node of the pid file, if it runs: SIGTERM (it
// leaves the cluster and drains), then SIGKILL after 30 s.
func stopDetached(l layout) string {
	return fmt.Sprintf(`pidf=%s
if [ -f "$pidf" ]; then
  pid=$(cat "$pidf")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q rbee "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"; i=0
    while kill -0 "$pid" 2>/dev/null; do
      i=$((i+1)); if [ $i -gt 300 ]; then kill -9 "$pid"; break; fi; sleep 0.1
    done
  fi
  rm -f "$pidf"
fi`, shq(l.pid))
}

// detachedSteps (re)start the node in the background, in its own session,
// its pid in a file.
func detachedSteps(l layout) []step {
	return []step{{what: "(re)start the node detached, pid file " + l.pid, script: stopDetached(l) + fmt.Sprintf(`
mkdir -p %s %s && chmod 700 %s
cd %s
s=; command -v setsid >/dev/null && s=setsid
$s %s node run --config %s </dev/null >>%s 2>&1 &
echo $! > "$pidf"`, shq(path.Dir(l.log)), shq(l.data), shq(l.data), shq(l.data), shq(l.bin), shq(l.config), shq(l.log))}}
}

// remoteArch maps `uname -m` to GOARCH.
var remoteArch = map[string]string{"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x"}

// binaryArch is the GOARCH of an ELF executable.
func binaryArch(file string) (string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", fmt.Errorf("%s: not a Linux executable: %w", file, err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	}
	return "", fmt.Errorf("%s: machine %v", file, f.Machine)
}

// installPlan is what every host gets.
type installPlan struct {
	binary     []byte
	binaryArch string
	binaryPath string
	binarySum  string // sha256, hex: a host that has it gets no copy
	key        wsapi.Key
	config     map[string]any
	service    string
	prefix     string
	dryRun     bool
	timeout    time.Duration
	ssh        *sshOptions
}

func runInstall(c *cli.Context) error {
	hosts, nodeArgs := splitHosts(c.Args().Slice())
	if len(hosts) == 0 {
		return errors.New("install: give at least one host ([user@]host[:port]); node flags go after --")
	}
	key, err := loadKey(c)
	if err != nil {
		return err
	}
	if key.IsZero() {
		return errors.New("install: --cluster-key-file is required: every node of the cluster needs the key (make one with rbee keygen)")
	}
	p := &installPlan{key: key, service: c.String("service"), prefix: c.String("prefix"), dryRun: c.Bool("dry-run"), timeout: c.Duration("timeout")}
	switch p.service {
	case serviceAuto, serviceSystemd, serviceDetached:
	default:
		return fmt.Errorf("install: --service %q: want auto, systemd or detached", p.service)
	}
	if p.config, err = nodeConfig(nodeArgs); err != nil {
		return err
	}
	if p.binaryPath = c.String("binary"); p.binaryPath == "" {
		if p.binaryPath, err = os.Executable(); err != nil {
			return fmt.Errorf("install: find this binary (give --binary): %w", err)
		}
	}
	if p.binaryArch, err = binaryArch(p.binaryPath); err != nil {
		return fmt.Errorf("install: %w; give --binary, a Linux build of rbee (GOOS=linux GOARCH=amd64 go build ./cmd/rbee)", err)
	}
	if !p.dryRun {
		if p.binary, err = os.ReadFile(p.binaryPath); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		sum := sha256.Sum256(p.binary)
		p.binarySum = hex.EncodeToString(sum[:])
	}
	p.ssh = sshOptionsFrom(c)
	return eachHost(c, hosts, func(ctx context.Context, t installTarget, say func(string, ...any)) error {
		return p.install(ctx, t, say)
	})
}

// eachHost runs do on every host at once, each with its own progress lines
// ("host: ..."), and fails if any failed.
func eachHost(c *cli.Context, hosts []string, do func(ctx context.Context, t installTarget, say func(string, ...any)) error) error {
	var targets []installTarget
	for _, h := range hosts {
		t, err := parseTarget(h, c.String("ssh-config"))
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	var mu sync.Mutex
	out := c.App.Writer
	width := 0
	for _, t := range targets {
		width = max(width, len(t.arg))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	for i, t := range targets {
		wg.Go(func() {
			say := func(format string, args ...any) {
				mu.Lock()
				defer mu.Unlock()
				fmt.Fprintf(out, "%-*s  %s\n", width, t.arg, fmt.Sprintf(format, args...))
			}
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			if err := do(ctx, t, say); err != nil {
				say("FAILED: %v", err)
				errs[i] = fmt.Errorf("%s: %w", t.arg, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// configFor is the config of one host, and its file.
func (p *installPlan) configFor(t installTarget, l layout) (map[string]any, []byte, error) {
	cfg := expandHost(p.config, t.alias)
	cfg["cluster-key-file"] = l.key
	if _, ok := cfg["data-dir"]; !ok {
		cfg["data-dir"] = l.data
	}
	var b bytes.Buffer
	b.WriteString("# Written by `rbee node install`; running it again replaces this file.\n")
	keys := make([]string, 0, len(cfg))
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		line, err := toml.Marshal(map[string]any{k: cfg[k]})
		if err != nil {
			return nil, nil, fmt.Errorf("config %s: %w", k, err)
		}
		b.Write(line)
	}
	return cfg, b.Bytes(), nil
}

func (p *installPlan) install(ctx context.Context, t installTarget, say func(string, ...any)) error {
	start := time.Now()
	l := newLayout(p.prefix, t.alias)
	cfg, conf, err := p.configFor(t, l)
	if err != nil {
		return err
	}
	if p.service == serviceSystemd && startsEngines(cfg) {
		return errEnginesUnderSystemd
	}
	files := []step{
		copyStep(fmt.Sprintf("copy %s (%s) to %s", p.binaryPath, p.binaryArch, l.bin), p.binary, l.bin, 0o755),
		copyStep("copy the cluster key to "+l.key+" (0600)", []byte(p.key.String()+"\n"), l.key, 0o600),
		copyStep("write the node's config "+l.config, conf, l.config, 0o600),
	}
	check := "uname -s; uname -m; id -u; if [ -d /run/systemd/system ]; then echo systemd; else echo none; fi; " +
		"{ sha256sum " + shq(l.bin) + " 2>/dev/null || echo none; } | cut -d' ' -f1"
	if p.dryRun {
		say("dry run: ssh %s@%s", t.user, t.addr)
		say("check: %s (want Linux, %s)", check, p.binaryArch)
		for _, s := range files {
			say("%s: %s", s.what, s.script)
		}
		say("(the files travel as one tar archive, unpacked with: tar -xf - -C / --no-same-owner)")
		say("node config:\n%s", strings.TrimSpace(string(conf)))
		if p.service != serviceDetached {
			pre := "if the host runs systemd: "
			if p.service == serviceSystemd {
				pre = ""
			}
			for _, s := range systemdSteps(l) {
				say("%s%s: %s", pre, s.what, s.script)
			}
			say("unit %s:\n%s", l.unit, unitFor(l))
		}
		if p.service != serviceSystemd {
			pre := "if the host does not run systemd: "
			if p.service == serviceDetached {
				pre = ""
			}
			for _, s := range detachedSteps(l) {
				say("%s%s: %s", pre, s.what, s.script)
			}
		}
		say("wait until the node answers %s and names a queen (%v at most)", api.PathHealth, p.timeout)
		return nil
	}
	cl, err := p.ssh.dial(ctx, t, say)
	if err != nil {
		return err
	}
	defer cl.Close()
	r := &remoteHost{c: cl}
	out, err := r.run(ctx, "check", check, nil)
	if err != nil {
		return err
	}
	f := strings.Fields(out)
	if len(f) != 5 {
		return fmt.Errorf("check: unexpected answer to %q: %q", check, out)
	}
	if f[0] != "Linux" {
		return fmt.Errorf("the host runs %s; rbee nodes run on Linux", f[0])
	}
	if arch := remoteArch[f[1]]; arch != p.binaryArch {
		return fmt.Errorf("the host is %s (%s) and %s is built for %s: build one for it (GOARCH=%s go build ./cmd/rbee) and give --binary", f[1], orDefault(arch, "unknown"), p.binaryPath, p.binaryArch, orDefault(arch, "?"))
	}
	r.sudo = f[2] != "0"
	if f[4] == p.binarySum {
		// The same build: only the key, config and restart.
		files = files[1:]
		say("%s is this build already", l.bin)
	}
	systemd := f[3] == "systemd"
	service := p.service
	switch {
	case service == serviceSystemd && !systemd:
		return errors.New("--service systemd, but the host does not run systemd (no /run/systemd/system): use --service detached, or auto")
	case service == serviceAuto && systemd:
		service = serviceSystemd
	case service == serviceAuto:
		service = serviceDetached
	}
	if service == serviceSystemd && startsEngines(cfg) {
		return errEnginesUnderSystemd
	}
	if service == serviceSystemd && p.prefix == "/" {
		// Before anything is replaced: a node a previous install
		// started detached would hold the ports.
		files = append([]step{{what: "stop a detached node of an earlier install", script: stopDetached(l)}}, files...)
	}
	say("connected (%v): %s %s, %s", time.Since(start).Round(10*time.Millisecond), f[0], f[1], map[bool]string{true: "systemd", false: "no systemd: the node runs detached"}[systemd])
	steps := files
	if service == serviceSystemd {
		steps = append(steps, systemdSteps(l)...)
	} else {
		steps = append(steps, detachedSteps(l)...)
	}
	script, stdin, err := batch(steps)
	if err != nil {
		return err
	}
	var what []string
	for _, s := range steps {
		what = append(what, s.what)
	}
	began := time.Now()
	if _, err := r.run(ctx, "install", script, stdin); err != nil {
		return err
	}
	say("%s (%v)", strings.Join(what, "; "), time.Since(began).Round(10*time.Millisecond))
	h, members, err := p.waitInCluster(ctx, cl, cfg)
	if err != nil {
		return fmt.Errorf("the node did not join: %w (its log: %s)", err, map[bool]string{true: "journalctl -u rbee", false: l.log}[service == serviceSystemd])
	}
	say("in the cluster as %q after %v: queen %s, %d members alive", h.Node, time.Since(start).Round(100*time.Millisecond), h.Queen, members)
	return nil
}

// waitInCluster polls the node's /healthz through the SSH connection until it
// names a queen, and counts the members it sees alive.
func (p *installPlan) waitInCluster(ctx context.Context, cl *ssh.Client, cfg map[string]any) (api.Health, int, error) {
	addr := loopbackHTTP(cfg)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return cl.DialContext(ctx, "tcp", a)
		},
		DisableKeepAlives: true,
	}}
	get := func(path string, out any) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+p.key.HTTPToken())
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out)
	}
	var last error
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		var h api.Health
		err := get(api.PathHealth, &h)
		switch {
		case err != nil:
			last = err
		case h.Queen == "":
			last = errors.New("it answers but names no queen yet")
		default:
			var ms []api.MemberView
			n := 0
			if get(api.PathAdminMembers, &ms) == nil {
				for _, m := range ms {
					if m.Status == "alive" {
						n++
					}
				}
			}
			return h, n, nil
		}
		select {
		case <-ctx.Done():
			return api.Health{}, 0, fmt.Errorf("%w; last: %v", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// loopbackHTTP is the address the installed node's API answers at on its
// machine.
func loopbackHTTP(cfg map[string]any) string {
	addr, _ := cfg["http-addr"].(string)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(api.DefaultHTTPPort))
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func runUninstall(c *cli.Context) error {
	hosts, rest := splitHosts(c.Args().Slice())
	if len(hosts) == 0 || len(rest) > 0 {
		return errors.New("uninstall: give the hosts ([user@]host[:port]), and no node flags")
	}
	o := sshOptionsFrom(c)
	dry, purge, prefix := c.Bool("dry-run"), c.Bool("purge"), c.String("prefix")
	return eachHost(c, hosts, func(ctx context.Context, t installTarget, say func(string, ...any)) error {
		l := newLayout(prefix, t.alias)
		rm := []string{l.bin, l.key, l.config, l.log}
		if purge {
			rm = append(rm, l.data)
		}
		quoted := make([]string, len(rm))
		for i, f := range rm {
			quoted[i] = shq(f)
		}
		steps := []step{
			{what: "stop and disable rbee.service, if installed", script: fmt.Sprintf(`if [ -d /run/systemd/system ] && [ -f %s ]; then systemctl disable --now --quiet rbee.service; rm -f %s; systemctl daemon-reload; fi`, shq(l.unit), shq(l.unit))},
			{what: "stop the detached node, if any", script: stopDetached(l)},
			{what: "remove " + strings.Join(rm, " "), script: "rm -rf " + strings.Join(quoted, " ") + " && rmdir " + shq(l.etc) + " 2>/dev/null; true"},
		}
		if dry {
			say("dry run: ssh %s@%s", t.user, t.addr)
			for _, s := range steps {
				say("%s: %s", s.what, s.script)
			}
			return nil
		}
		cl, err := o.dial(ctx, t, say)
		if err != nil {
			return err
		}
		defer cl.Close()
		r := &remoteHost{c: cl}
		id, err := r.run(ctx, "check", "id -u", nil)
		if err != nil {
			return err
		}
		r.sudo = strings.TrimSpace(id) != "0"
		script, _, err := batch(steps)
		if err != nil {
			return err
		}
		if _, err := r.run(ctx, "uninstall", script, nil); err != nil {
			return err
		}
		say("stopped the node; removed %s", strings.Join(rm, " "))
		return nil
	})
}

// remoteHost runs steps over one SSH connection.
type remoteHost struct {
	c    *ssh.Client
	sudo bool // not root: steps go through sudo -n
}

func (r *remoteHost) run(ctx context.Context, what, script string, stdin []byte) (string, error) {
	sess, err := r.c.NewSession()
	if err != nil {
		return "", fmt.Errorf("%s: ssh session: %w", what, err)
	}
	defer sess.Close()
	cmd := "sh -c " + shq(script)
	if r.sudo {
		cmd = "sudo -n " + cmd
	}
	var out, errOut bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errOut
	if stdin != nil {
		sess.Stdin = bytes.NewReader(stdin)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = sess.Close()
		<-done
		return "", fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if err != nil {
		msg := strings.TrimSpace(errOut.String())
		if r.sudo && strings.Contains(msg, "sudo") {
			msg += " (log in as root, or allow this user passwordless sudo)"
		}
		return "", fmt.Errorf("%s: %v: %s", what, err, msg)
	}
	return out.String(), nil
}

// sshOptions are how to reach and trust hosts.
type sshOptions struct {
	identities []string
	knownHosts []string
	acceptNew  bool

	mu sync.Mutex // serializes additions to known_hosts
}

func sshOptionsFrom(c *cli.Context) *sshOptions {
	return &sshOptions{identities: c.StringSlice("identity"), knownHosts: c.StringSlice("known-hosts"), acceptNew: c.Bool("accept-new-host-key")}
}

// dial connects and authenticates to t: keys from the SSH agent, --identity,
// ssh_config's IdentityFile (else ~/.ssh/id_ed25519, id_ecdsa, id_rsa), the
// host key checked against known_hosts.
func (o *sshOptions) dial(ctx context.Context, t installTarget, say func(string, ...any)) (*ssh.Client, error) {
	var signers []ssh.Signer
	var tried []string
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if conn, err := (&net.Dialer{}).DialContext(ctx, "unix", sock); err == nil {
			defer conn.Close()
			if s, err := agent.NewClient(conn).Signers(); err == nil {
				signers = append(signers, s...)
				tried = append(tried, fmt.Sprintf("%d from the SSH agent", len(s)))
			}
		}
	}
	files := append(append([]string{}, o.identities...), t.ids...)
	if len(files) == 0 {
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			files = append(files, filepath.Join(expandHome("~/.ssh"), n))
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(expandHome(f))
		if err != nil {
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		var pass *ssh.PassphraseMissingError
		if errors.As(err, &pass) {
			tried = append(tried, f+" (passphrase-protected: add it to the agent, ssh-add)")
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("identity %s: %w", f, err)
		}
		signers = append(signers, s)
		tried = append(tried, f)
	}
	if len(signers) == 0 {
		return nil, fmt.Errorf("no SSH key to log in with: no agent (SSH_AUTH_SOCK), no usable key in %s", strings.Join(files, ", "))
	}
	var known []string
	for _, k := range cmpOr(o.knownHosts, t.known, []string{"~/.ssh/known_hosts"}) {
		known = append(known, expandHome(k))
	}
	hostCB, algos, err := o.hostKeyCallback(known, t.addr, say)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:              t.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signers...)},
		HostKeyCallback:   hostCB,
		HostKeyAlgorithms: algos,
		Timeout:           15 * time.Second,
	}
	conn, err := (&net.Dialer{Timeout: cfg.Timeout}).DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", t.addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, t.addr, cfg)
	if err != nil {
		conn.Close()
		var hk *hostKeyError
		if errors.As(err, &hk) {
			return nil, hk
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("ssh %s@%s: the host refused every key offered (%s): is the public key in %s's ~/.ssh/authorized_keys?", t.user, t.addr, strings.Join(tried, ", "), t.user)
		}
		return nil, fmt.Errorf("ssh %s@%s: %w", t.user, t.addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// hostKeyError is a refused host key, said plainly.
type hostKeyError struct{ msg string }

func (e *hostKeyError) Error() string { return e.msg }

// hostKeyCallback checks host keys against the known_hosts files; an unknown
// host is refused unless acceptNew, then its key is added to the first
// file. algos are the key types known_hosts holds for addr, so that the
// server is asked for the key that can be checked.
func (o *sshOptions) hostKeyCallback(files []string, addr string, say func(string, ...any)) (ssh.HostKeyCallback, []string, error) {
	var exist []string
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			exist = append(exist, f)
		}
	}
	check := func(string, net.Addr, ssh.PublicKey) error { return &knownhosts.KeyError{} }
	if len(exist) > 0 {
		cb, err := knownhosts.New(exist...)
		if err != nil {
			return nil, nil, fmt.Errorf("known_hosts: %w", err)
		}
		check = cb
	}
	var algos []string
	var ke *knownhosts.KeyError
	if err := check(addr, &net.TCPAddr{}, probeKey{}); errors.As(err, &ke) {
		for _, k := range ke.Want {
			switch t := k.Key.Type(); t {
			case ssh.KeyAlgoRSA:
				algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, t)
			default:
				algos = append(algos, t)
			}
		}
	}
	cb := func(host string, remote net.Addr, key ssh.PublicKey) error {
		err := check(host, remote, key)
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &re):
			return &hostKeyError{fmt.Sprintf("host %s offers a revoked key (%s)", host, ssh.FingerprintSHA256(key))}
		case errors.As(err, &ke) && len(ke.Want) > 0:
			w := ke.Want[0]
			return &hostKeyError{fmt.Sprintf("HOST KEY MISMATCH for %s: it offers %s %s, but %s:%d holds another key for it; someone may be intercepting the connection, or the host was reinstalled (then remove that line). Refusing",
				host, key.Type(), ssh.FingerprintSHA256(key), w.Filename, w.Line)}
		case errors.As(err, &ke):
			if !o.acceptNew {
				return &hostKeyError{fmt.Sprintf("unknown host key for %s: %s %s is not in %s; check the fingerprint and add it (ssh %s once), or pass --accept-new-host-key",
					host, key.Type(), ssh.FingerprintSHA256(key), strings.Join(files, ", "), host)}
			}
			if err := o.addKnownHost(files[0], host, key); err != nil {
				return err
			}
			say("added the host key %s %s to %s", key.Type(), ssh.FingerprintSHA256(key), files[0])
			return nil
		}
		return err
	}
	return cb, algos, nil
}

func (o *sshOptions) addKnownHost(file, host string, key ssh.PublicKey) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("known_hosts: %w", err)
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("known_hosts: %w", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(host)}, key)); err != nil {
		return fmt.Errorf("known_hosts: %w", err)
	}
	return nil
}

// probeKey is a key no host has: checking it reveals which keys
// known_hosts holds for a host.
type probeKey struct{}

func (probeKey) Type() string                        { return "rbee-probe" }
func (probeKey) Marshal() []byte                     { return []byte("rbee-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key") }

// cmpOr is the first non-empty list.
func cmpOr(lists ...[]string) []string {
	for _, l := range lists {
		if len(l) > 0 {
			return l
		}
	}
	return nil
}
