package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestInstallUnitIsDeploys: the unit install writes is deploy's, not a copy
// that drifted (go generate ./cmd/rbee refreshes it).
func TestInstallUnitIsDeploys(t *testing.T) {
	b, err := os.ReadFile("../../deploy/systemd/rbee.service")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != installUnit {
		t.Fatal("cmd/rbee/install_rbee.service differs from deploy/systemd/rbee.service: run go generate ./cmd/rbee")
	}
}

func TestInstallUnitPointsAtInstalledFiles(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   []string
		not    []string
	}{
		{"/", []string{"ExecStart=/usr/local/bin/rbee node run --config /etc/rbee/rbee.toml\n", "EnvironmentFile=-/etc/rbee/rbee.env\n", "StateDirectory=rbee\n"},
			[]string{"\nReadWritePaths="}},
		{"/opt/rbee", []string{"ExecStart=/opt/rbee/usr/local/bin/rbee node run --config /opt/rbee/etc/rbee/rbee.toml\n", "ReadWritePaths=/opt/rbee/var/lib/rbee\n"}, nil},
	} {
		u := unitFor(newLayout(tc.prefix, "h"))
		for _, w := range tc.want {
			if !strings.Contains(u, w) {
				t.Errorf("prefix %s: unit lacks %q:\n%s", tc.prefix, w, u)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(u, n) {
				t.Errorf("prefix %s: unit has %q", tc.prefix, n)
			}
		}
		if strings.Count(u, "ExecStart=") != 1 {
			t.Errorf("prefix %s: want one ExecStart", tc.prefix)
		}
	}
}

func TestInstallNodeConfig(t *testing.T) {
	cfg, err := nodeConfig([]string{"--roles", "hive", "--worker", "http://127.0.0.1:8080,model=a", "--worker", "http://127.0.0.1:8081,model=b",
		"--queue-limit", "5", "--debug-pprof", "--queue-timeout", "45s", "--name", "gpu-%h"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"roles": []string{"hive"}, "worker": []string{"http://127.0.0.1:8080,model=a", "http://127.0.0.1:8081,model=b"},
		"queue-limit": int64(5), "debug-pprof": true, "queue-timeout": "45s", "name": "gpu-%h"}
	if len(cfg) != len(want) {
		t.Fatalf("config %v, want %v", cfg, want)
	}
	for k, w := range want {
		switch w := w.(type) {
		case []string:
			if g, ok := cfg[k].([]string); !ok || !slices.Equal(g, w) {
				t.Errorf("%s = %#v, want %#v", k, cfg[k], w)
			}
		default:
			if cfg[k] != w {
				t.Errorf("%s = %#v, want %#v", k, cfg[k], w)
			}
		}
	}
	p := &installPlan{config: cfg}
	l := newLayout("/srv/%h", "10.0.0.7")
	got, file, err := p.configFor(installTarget{arg: "root@10.0.0.7:22", alias: "10.0.0.7"}, l)
	if err != nil {
		t.Fatal(err)
	}
	if got["name"] != "gpu-10.0.0.7" || got["cluster-key-file"] != "/srv/10.0.0.7/etc/rbee/key" || got["data-dir"] != "/srv/10.0.0.7/var/lib/rbee" {
		t.Errorf("per-host config %v", got)
	}
	// The file is what `rbee node run --config` reads back.
	path := filepath.Join(t.TempDir(), "rbee.toml")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	settings, err := newSchema(nodeRunCommand().Flags).read(path)
	if err != nil {
		t.Fatalf("the node cannot read the config install writes: %v\n%s", err, file)
	}
	if len(settings) != len(got) {
		t.Errorf("read back %d settings from:\n%s", len(settings), file)
	}

	for _, bad := range [][]string{
		{"--gosip-addr", ":1"},
		{"--queue-limit", "many"},
		{"--cluster-key-file", "/k"},
		{"--config", "/c"},
		{"stray"},
	} {
		if _, err := nodeConfig(bad); err == nil {
			t.Errorf("node flags %q accepted", bad)
		}
	}
}

func TestInstallTargets(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "config")
	conf := `# laptop
Host gpu-*  !gpu-9
    User ops
    Port 2222
    IdentityFile ~/.ssh/gpu_key
Host gpu-1
    HostName 10.0.0.11
    User nobody
Host *
    UserKnownHostsFile /tmp/kh1 /tmp/kh2
`
	if err := os.WriteFile(cfgFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	home, _ := os.UserHomeDir()
	for _, tc := range []struct {
		arg, addr, user string
		ids             []string
	}{
		{"gpu-1", "10.0.0.11:2222", "ops", []string{filepath.Join(home, ".ssh/gpu_key")}},
		{"root@gpu-2:22", "gpu-2:22", "root", []string{filepath.Join(home, ".ssh/gpu_key")}},
		{"gpu-9", "gpu-9:22", "", nil},
		{"admin@[fd00::1]:2200", "[fd00::1]:2200", "admin", nil},
	} {
		got, err := parseTarget(tc.arg, cfgFile)
		if err != nil {
			t.Fatalf("%s: %v", tc.arg, err)
		}
		if got.addr != tc.addr || (tc.user != "" && got.user != tc.user) || !slices.Equal(got.ids, tc.ids) {
			t.Errorf("%s: addr %s user %s ids %v; want %s %s %v", tc.arg, got.addr, got.user, got.ids, tc.addr, tc.user, tc.ids)
		}
		if !slices.Equal(got.known, []string{"/tmp/kh1", "/tmp/kh2"}) {
			t.Errorf("%s: known hosts %v", tc.arg, got.known)
		}
	}
	if _, err := parseTarget("--roles", cfgFile); err == nil {
		t.Error("a flag taken for a host")
	}
	hosts, flags := splitHosts([]string{"a", "b", "--", "--roles", "hive"})
	if !slices.Equal(hosts, []string{"a", "b"}) || !slices.Equal(flags, []string{"--roles", "hive"}) {
		t.Errorf("split: %v %v", hosts, flags)
	}
}

// TestInstallDryRunSystemd: --dry-run prints every step with its commands,
// the systemd path's included, and touches no host (there is none).
func TestInstallDryRunSystemd(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	key, _, err := runRbee("keygen")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runRbee("node", "install", "--cluster-key-file", keyFile, "--dry-run", "--service", "systemd", "--ssh-config", "",
		"root@gpu-1.invalid", "gpu-2.invalid:2222", "--", "--roles", "hive")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for _, want := range []string{
		"root@gpu-1.invalid  dry run: ssh root@gpu-1.invalid:22",
		"gpu-2.invalid:2222  dry run: ssh ",
		"uname -m",
		"mv -f '/usr/local/bin/rbee.rbee-new' '/usr/local/bin/rbee'",
		"chmod 600 '/etc/rbee/key.rbee-new'",
		"roles = ['hive']",
		"cluster-key-file = '/etc/rbee/key'",
		"install the systemd unit /etc/systemd/system/rbee.service",
		"systemctl daemon-reload && systemctl enable --quiet rbee.service && systemctl restart rbee.service",
		"ExecStart=/usr/local/bin/rbee node run --config /etc/rbee/rbee.toml",
		"wait until the node answers /healthz and names a queen",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "detached") {
		t.Errorf("--service systemd dry run shows the detached path:\n%s", out)
	}
	if strings.Contains(out, strings.TrimSpace(key)) {
		t.Error("the dry run prints the cluster key")
	}
}

// A hive that starts engines is not installed under rbee.service, whose
// hardening its engines would inherit: install says so before touching the
// host.
func TestInstallRefusesEnginesUnderSystemd(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	key, _, err := runRbee("keygen")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, flags := range [][]string{{"--models-dir", "/srv/models"}, {"--model", "tiny=/srv/models/tiny.gguf"}} {
		out, errOut, err := runRbee(append([]string{"node", "install", "--cluster-key-file", keyFile, "--dry-run", "--service", "systemd", "--ssh-config", "",
			"root@gpu-1.invalid", "--"}, flags...)...)
		if err == nil || !strings.Contains(out+errOut, "rbee-hive.service") || strings.Contains(out, "install the systemd unit") {
			t.Errorf("install %v under systemd: %v\n%s\n%s: want a refusal naming rbee-hive.service", flags, err, out, errOut)
		}
	}
}
