package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrintConfig_GossipProfile: --print-config names the profile in force,
// from the flag, its variable or the file, and spells out what it means for
// finding a dead node, in comments that leave the output valid TOML.
func TestPrintConfig_GossipProfile(t *testing.T) {
	unsetRbeeEnv(t)
	file := filepath.Join(t.TempDir(), "rbee.toml")
	if err := os.WriteFile(file, []byte("gossip-profile = \"wan\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		env     string
		args    []string
		profile string
		figures []string
	}{
		{"default", "", nil, "lan", []string{
			"probe interval    200ms", "probe timeout     100ms",
			"suspicion window  600ms when other nodes confirm it, up to 1.8s unconfirmed",
			"declared dead after about 1s (at most 2.2s)",
		}},
		{"flag", "", []string{"--gossip-profile", "wan"}, "wan", []string{
			"probe interval    5s", "probe timeout     3s",
			"suspicion window  30s when other nodes confirm it, up to 3m0s unconfirmed",
			"declared dead after about 40s (at most 3m10s)",
		}},
		{"environment", "wan", nil, "wan", []string{"probe interval    5s"}},
		{"file", "", []string{"--config", file}, "wan", []string{"probe interval    5s"}},
		{"flag beats file", "", []string{"--config", file, "--gossip-profile", "lan"}, "lan", []string{"probe interval    200ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("RBEE_GOSSIP_PROFILE", tc.env)
			}
			got, out := printedConfig(t, tc.args...)
			if got["gossip-profile"] != tc.profile {
				t.Errorf("gossip-profile = %#v, want %q", got["gossip-profile"], tc.profile)
			}
			for _, f := range append(tc.figures, `# gossip-profile "`+tc.profile+`", in a cluster of up to 10 nodes:`) {
				if !strings.Contains(out, f) {
					t.Errorf("--print-config does not say %q:\n%s", f, out)
				}
			}
		})
	}
}

// TestNodeRun_UnknownGossipProfile: a profile that does not exist stops the
// command with the choices, before anything listens.
func TestNodeRun_UnknownGossipProfile(t *testing.T) {
	unsetRbeeEnv(t)
	for _, args := range [][]string{
		{"--gossip-profile", "WAN"},
		{"--gossip-profile", ""},
		{"--gossip-profile", "satellite", "--print-config"},
	} {
		_, err := runApp(append([]string{"node", "run", "--http-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0"}, args...)...)
		want := `--gossip-profile: unknown gossip profile "` + args[1] + `" (want lan or wan)`
		if err == nil || err.Error() != want {
			t.Errorf("%v: error %v, want %s", args, err, want)
		}
	}
}
