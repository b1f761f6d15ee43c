package check

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Where the rest of the repository is, from this package's directory (where
// go test runs).
const (
	RepoRoot   = "../.."
	K8sDir     = "../k8s"
	EnginesDir = "../k8s-engines" // the overlay with the engine hives
	SystemdDir = "../systemd"
	DockerDir  = "../docker"
)

var (
	envVarsField = regexp.MustCompile(`EnvVars:\s*\[\]string\{([^}]*)\}`)
	quoted       = regexp.MustCompile(`"([A-Z0-9_]+)"`)
	goDirective  = regexp.MustCompile(`(?m)^go (\d+\.\d+)(?:\.\d+)?\s*$`)
)

// RbeeEnvVars lists the environment variables rbee's commands read: the
// EnvVars of the flags defined in cmd/rbee (test files aside). A variable
// set in a deployment file and missing here would be ignored without a word.
func RbeeEnvVars(root string) (map[string]bool, error) {
	files, err := filepath.Glob(filepath.Join(root, "cmd", "rbee", "*.go"))
	if err != nil {
		return nil, err
	}
	vars := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, m := range envVarsField.FindAllStringSubmatch(string(b), -1) {
			for _, q := range quoted.FindAllStringSubmatch(m[1], -1) {
				vars[q[1]] = true
			}
		}
	}
	if !vars["RBEE_CLUSTER_KEY_FILE"] {
		return nil, fmt.Errorf("found no RBEE_CLUSTER_KEY_FILE among the flags in %s/cmd/rbee: has the way flags are defined changed?", root)
	}
	return vars, nil
}

// otherCommandFiles hold the flags of commands other than `rbee node run`
// (`worker simulate`, `demo`, `worker run`); a variable read only there is no
// setting of a node.
var otherCommandFiles = map[string]bool{"simulate.go": true, "demo.go": true, "worker.go": true}

// NodeRunEnvVars lists the variables of `rbee node run`: those of the flags
// defined in cmd/rbee outside otherCommandFiles. cmd/rbee's
// TestDeployEnvFileListsEveryNodeRunVariable checks rbee.env against the
// command's flags themselves; this keeps the deploy checks whole on their own.
func NodeRunEnvVars(root string) (map[string]bool, error) {
	files, err := filepath.Glob(filepath.Join(root, "cmd", "rbee", "*.go"))
	if err != nil {
		return nil, err
	}
	vars := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || otherCommandFiles[filepath.Base(f)] {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, m := range envVarsField.FindAllStringSubmatch(string(b), -1) {
			// A flag with aliases (RBEE_API_KEYS, RBEE_API_KEY) is listed
			// under its first name.
			if q := quoted.FindStringSubmatch(m[1]); q != nil {
				vars[q[1]] = true
			}
		}
	}
	if !vars["RBEE_CLUSTER_KEY_FILE"] || !vars["RBEE_MODELS_DIR"] {
		return nil, fmt.Errorf("found no RBEE_CLUSTER_KEY_FILE or RBEE_MODELS_DIR among the flags in %s/cmd/rbee: has the way flags are defined changed?", root)
	}
	return vars, nil
}

// GoVersion is the major.minor of go.mod's go directive.
func GoVersion(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	m := goDirective.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("go.mod has no go directive")
	}
	return string(m[1]), nil
}
