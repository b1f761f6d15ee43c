package main

import (
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/urfave/cli/v2"
)

// deployEnvFile is the environment file the systemd units read: it lists
// every variable `rbee node run` reads, so that an operator finds each
// setting there.
const deployEnvFile = "../../deploy/systemd/rbee.env"

// envLine is an assignment in an environment file, live or commented out
// (#RBEE_NAME=gpu-1); prose comments do not match.
var envLine = regexp.MustCompile(`(?m)^#?(RBEE_[A-Z0-9_]+)=`)

// envFileGaps compares an environment file with flags: missing are the
// flags' variables the file names nowhere (a flag with aliases needs its
// first), unknown the RBEE_* names in the file that no flag reads.
func envFileGaps(flags []cli.Flag, file []byte) (missing, unknown []string) {
	inFile := map[string]bool{}
	for _, m := range envLine.FindAllSubmatch(file, -1) {
		inFile[string(m[1])] = true
	}
	read := map[string]bool{}
	for _, f := range flags {
		ev, ok := f.(interface{ GetEnvVars() []string })
		if !ok || len(ev.GetEnvVars()) == 0 {
			continue
		}
		vars := ev.GetEnvVars()
		for _, v := range vars {
			read[v] = true
		}
		if !inFile[vars[0]] {
			missing = append(missing, vars[0])
		}
	}
	for v := range inFile {
		if !read[v] {
			unknown = append(unknown, v)
		}
	}
	slices.Sort(unknown)
	return missing, unknown
}

func TestDeployEnvFileListsEveryNodeRunVariable(t *testing.T) {
	b, err := os.ReadFile(deployEnvFile)
	if err != nil {
		t.Fatal(err)
	}
	flags := nodeRunCommand().Flags
	missing, unknown := envFileGaps(flags, b)
	for _, v := range missing {
		t.Errorf("%s: `rbee node run` reads %s; list it (commented out, with what it does)", deployEnvFile, v)
	}
	for _, v := range unknown {
		t.Errorf("%s: names %s, which `rbee node run` does not read", deployEnvFile, v)
	}
}

func TestEnvFileGapsFindsBoth(t *testing.T) {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "name", EnvVars: []string{"RBEE_NAME"}},
		&cli.StringSliceFlag{Name: "api-key", EnvVars: []string{"RBEE_API_KEYS", "RBEE_API_KEY"}},
		&cli.StringFlag{Name: "join", EnvVars: []string{"RBEE_JOIN"}},
		&cli.BoolFlag{Name: "print-config"},
	}
	file := []byte("# RBEE_JOIN=in prose is not a listing\nRBEE_NAME=a\n#RBEE_API_KEY=k\n#RBEE_JOINS=x:7946\n")
	missing, unknown := envFileGaps(flags, file)
	if !slices.Equal(missing, []string{"RBEE_API_KEYS", "RBEE_JOIN"}) {
		t.Errorf("missing %v, want RBEE_API_KEYS (the first name) and RBEE_JOIN", missing)
	}
	if !slices.Equal(unknown, []string{"RBEE_JOINS"}) {
		t.Errorf("unknown %v, want RBEE_JOINS", unknown)
	}
}
