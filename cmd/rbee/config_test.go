package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/urfave/cli/v2"
)

// configFixture is the path of testdata/config/<name>/rbee.toml.
func configFixture(name string) string {
	return filepath.Join("testdata", "config", name, "rbee.toml")
}

// unsetRbeeEnv clears the RBEE_* variables of the test's environment for
// the test, so that only what the test sets counts.
func unsetRbeeEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "RBEE_") {
			t.Setenv(k, v) // restored when the test ends
			os.Unsetenv(k)
		}
	}
}

// printedConfig runs `rbee node run ARGS --print-config` in-process and
// decodes what it prints.
func printedConfig(t *testing.T, args ...string) (map[string]any, string) {
	t.Helper()
	out, err := runApp(append(append([]string{"node", "run"}, args...), "--print-config")...)
	if err != nil {
		t.Fatalf("rbee node run %s --print-config: %v", strings.Join(args, " "), err)
	}
	var got map[string]any
	if err := toml.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--print-config printed no TOML: %v\n%s", err, out)
	}
	return got, out
}

// TestConfigFile_Precedence: a flag beats its environment variable, which
// beats the file, which beats the default.
func TestConfigFile_Precedence(t *testing.T) {
	full := configFixture("full")
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want map[string]any
	}{
		{
			name: "file over default",
			args: []string{"--config", full},
			want: map[string]any{
				"queue-limit": int64(64), "queue-timeout": "45s", "debug-pprof": true, "log-level": "debug",
				"join":   []any{"10.0.0.2:7946", "10.0.0.3:7946"},
				"worker": []any{"http://127.0.0.1:8080,model=llama,slots=4", "http://127.0.0.1:8081,model=qwen"},
			},
		},
		{
			name: "default where the file is silent",
			args: []string{"--config", configFixture("minimal")},
			want: map[string]any{"queue-limit": int64(1024), "queue-timeout": "30s", "debug-pprof": false, "roles": []any{"queen", "hive"}},
		},
		{
			name: "RBEE_CONFIG names the file",
			env:  map[string]string{"RBEE_CONFIG": full},
			want: map[string]any{"queue-limit": int64(64), "name": "gpu-1"},
		},
		{
			name: "env over file",
			env:  map[string]string{"RBEE_QUEUE_LIMIT": "9", "RBEE_QUEUE_TIMEOUT": "5s", "RBEE_DEBUG_PPROF": "false", "RBEE_JOIN": "10.9.9.9:7946", "RBEE_LOG_LEVEL": "warn"},
			args: []string{"--config", full},
			want: map[string]any{"queue-limit": int64(9), "queue-timeout": "5s", "debug-pprof": false, "join": []any{"10.9.9.9:7946"}, "log-level": "warn", "body-memory": int64(512)},
		},
		{
			name: "flag over env and file",
			env:  map[string]string{"RBEE_QUEUE_LIMIT": "9", "RBEE_LOG_LEVEL": "warn"},
			args: []string{"--config", full, "--queue-limit", "7", "--log-level", "error", "--join", "10.8.8.8:7946", "--debug-pprof=false"},
			want: map[string]any{"queue-limit": int64(7), "log-level": "error", "join": []any{"10.8.8.8:7946"}, "debug-pprof": false, "queue-timeout": "45s"},
		},
		{
			name: "--config over RBEE_CONFIG",
			env:  map[string]string{"RBEE_CONFIG": configFixture("minimal")},
			args: []string{"--config", full},
			want: map[string]any{"queue-limit": int64(64)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unsetRbeeEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			got, out := printedConfig(t, tc.args...)
			for k, want := range tc.want {
				if !reflect.DeepEqual(got[k], want) {
					t.Errorf("%s = %#v, want %#v\n%s", k, got[k], want, out)
				}
			}
		})
	}
}

// TestConfigFile_Errors: each kind of mistake is reported with the file, the
// line and the key.
func TestConfigFile_Errors(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		want    string // after the fixture's path
	}{
		{"unknown-key", `:7: unknown key "gosip-addr" (did you mean "gossip-addr"?)`},
		{"unknown-table", `:4: unknown table "catalog": the file has no tables, only flag names as top-level keys`},
		{"wrong-type", `:3: key "queue-limit": want an integer, got a string`},
		{"wrong-element", `:2: key "join": want an array of strings, got an array holding an integer`},
		{"bad-duration", `:3: key "queue-timeout": "30 seconds" is not a duration (want a number and a unit: "30s", "1m30s", "500ms")`},
		{"duplicate-key", `:3: key "queue-limit": key queue-limit is already defined`},
		{"syntax", `:2: array is incomplete`},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			unsetRbeeEnv(t)
			path := configFixture(tc.fixture)
			out, err := runApp("node", "run", "--config", path, "--print-config")
			if err == nil {
				t.Fatalf("no error; printed\n%s", out)
			}
			if want := path + tc.want; err.Error() != want {
				t.Errorf("error\n%s\nwant\n%s", err, want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		unsetRbeeEnv(t)
		path := filepath.Join(t.TempDir(), "rbee.toml")
		_, err := runApp("node", "run", "--config", path, "--print-config")
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("error %v does not name %s", err, path)
		}
	})
}

// TestConfigFile_UnknownKeysAllReported: every unknown key is named, not
// only the first.
func TestConfigFile_UnknownKeysAllReported(t *testing.T) {
	unsetRbeeEnv(t)
	path := filepath.Join(t.TempDir(), "rbee.toml")
	if err := os.WriteFile(path, []byte("queu-limit = 3\nname = \"a\"\nbogus = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := runApp("node", "run", "--config", path, "--print-config")
	want := path + `:1: unknown key "queu-limit" (did you mean "queue-limit"?)` + "\n" + path + `:3: unknown key "bogus"`
	if err == nil || err.Error() != want {
		t.Errorf("error\n%v\nwant\n%s", err, want)
	}
}

// TestPrintConfig: --print-config prints the file's values in its keys, with
// the secrets masked (the key file's path is none), and what it prints reads
// back as the same configuration.
func TestPrintConfig(t *testing.T) {
	unsetRbeeEnv(t)
	got, out := printedConfig(t, "--config", configFixture("full"))
	doc, err := os.ReadFile(configFixture("full"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := toml.Unmarshal(doc, &want); err != nil {
		t.Fatal(err)
	}
	want["cluster-key"] = masked
	want["api-key"] = []any{masked, masked}
	want["body-timeout"] = "2m0s" // as time.Duration writes it
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			t.Errorf("%s = %#v, want %#v", k, got[k], w)
		}
	}
	for _, secret := range []string{"c2VjcmV0LWNsdXN0ZXIta2V5", "sk-one", "sk-two"} {
		if strings.Contains(out, secret) {
			t.Errorf("--print-config shows the secret %q:\n%s", secret, out)
		}
	}
	printed := filepath.Join(t.TempDir(), "printed.toml")
	if err := os.WriteFile(printed, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, again := printedConfig(t, "--config", printed); again != out {
		t.Errorf("the printed configuration, read back, prints\n%s\nwant\n%s", again, out)
	}
}

// TestPrintConfig_ListenDefaults: unset listen addresses print as the node
// would resolve them: loopback without a cluster key, every interface with.
func TestPrintConfig_ListenDefaults(t *testing.T) {
	unsetRbeeEnv(t)
	got, _ := printedConfig(t)
	if got["gossip-addr"] != "127.0.0.1:7946" || got["http-addr"] != "127.0.0.1:7833" {
		t.Errorf("without a key: gossip-addr %v, http-addr %v; want loopback", got["gossip-addr"], got["http-addr"])
	}
	if got["cluster-key"] != "" {
		t.Errorf("unset cluster-key prints as %#v, want \"\"", got["cluster-key"])
	}
	got, _ = printedConfig(t, "--cluster-key-file", "/etc/rbee/cluster.key")
	if got["gossip-addr"] != ":7946" || got["http-addr"] != ":7833" {
		t.Errorf("with a key: gossip-addr %v, http-addr %v; want every interface", got["gossip-addr"], got["http-addr"])
	}
}

// TestConfigFile_CoversEveryFlag: every flag of `node run` is a key of the
// file, typed after the flag, with no list to keep in step.
func TestConfigFile_CoversEveryFlag(t *testing.T) {
	unsetRbeeEnv(t)
	got, out := printedConfig(t)
	for _, f := range nodeRunCommand().Flags {
		name := f.Names()[0]
		if notInFile[name] {
			continue
		}
		if _, ok := got[name]; !ok {
			t.Errorf("flag --%s is not a key of --print-config's output:\n%s", name, out)
		}
		switch f.(type) {
		case *cli.StringFlag, *cli.StringSliceFlag, *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag,
			*cli.Float64Flag, *cli.BoolFlag, *cli.DurationFlag:
		default:
			t.Errorf("flag --%s is a %T, which the file takes as a string: give it a kind in config.go's kindOf", name, f)
		}
	}
}

// TestE2E_ConfigFileOnly: a node started with nothing but --config listens
// where the file says and takes its name from it.
func TestE2E_ConfigFileOnly(t *testing.T) {
	c := newCluster(t)
	path := filepath.Join(c.dir, "rbee.toml")
	var p *proc
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		p = &proc{
			name:       "from-file",
			gossipAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
			httpAddr:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
		}
		file := fmt.Sprintf("name = %q\ngossip-addr = %q\nhttp-addr = %q\ncluster-key-file = %q\nlog-level = %q\n",
			p.name, p.gossipAddr, p.httpAddr, c.keyFile, c.logLvl)
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := c.launch(p, exec.Command(rbeeBin, "node", "run", "--config", path)); err != nil {
			t.Fatal(err)
		}
		err = c.waitHealthy(p, 15*time.Second)
		if err == nil {
			break
		}
		// Lost a port to another process between picking and binding.
		if attempt == maxStartAttempts || !p.Exited() || !strings.Contains(p.log(), "address already in use") {
			t.Fatalf("%v\nlog:\n%s", err, tail(p.log(), 16<<10))
		}
	}
	ms, err := c.members(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Name != p.name || ms[0].GossipAddr != p.gossipAddr {
		t.Errorf("members %+v, want only %s at %s", ms, p.name, p.gossipAddr)
	}
}

// --api-key reads RBEE_API_KEYS, and the singular name users guess as well.
func TestAPIKeyEnvNames(t *testing.T) {
	for _, name := range []string{"RBEE_API_KEYS", "RBEE_API_KEY"} {
		t.Run(name, func(t *testing.T) {
			unsetRbeeEnv(t)
			t.Setenv(name, "sk-a")
			got, _ := printedConfig(t)
			if want := []any{masked}; !reflect.DeepEqual(got["api-key"], want) {
				t.Fatalf("api-key = %#v with %s set, want the key", got["api-key"], name)
			}
		})
	}
}
