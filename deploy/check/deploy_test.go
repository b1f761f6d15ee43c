package check

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// load reads what every check needs, failing the test on any error.
func load(t *testing.T) (*Cluster, Rbee) {
	t.Helper()
	objs, err := LoadManifests(K8sDir)
	if err != nil {
		t.Fatal(err)
	}
	vars, err := RbeeEnvVars(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	stages := parseDockerfile(t)
	goVer, err := GoVersion(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := CheckDockerfile(stages, goVer)
	return NewCluster(objs), Rbee{EnvVars: vars, ImageUID: uid}
}

// parseFile reads dir/name and parses it, failing the test on any error.
func parseFile[T any](t *testing.T, dir, name string, parse func([]byte) (T, error)) T {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	v, err := parse(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func parseDockerfile(t *testing.T) []Stage {
	t.Helper()
	return parseFile(t, DockerDir, "Dockerfile", ParseDockerfile)
}

func parseUnit(t *testing.T, name string) Unit {
	t.Helper()
	return parseFile(t, SystemdDir, name, ParseUnit)
}

func report(t *testing.T, what string, errs []error) {
	t.Helper()
	for _, err := range errs {
		t.Errorf("%s: %v", what, err)
	}
}

func TestManifests(t *testing.T) {
	c, r := load(t)
	kinds := map[string]int{}
	for _, o := range c.Objects {
		kinds[o.Kind]++
	}
	for kind, n := range map[string]int{"Namespace": 1, "Secret": 1, "ConfigMap": 1, "Service": 3, "DaemonSet": 1, "Deployment": 1, "PodDisruptionBudget": 1, "StatefulSet": 0} {
		if kinds[kind] != n {
			t.Errorf("%d %s, want %d", kinds[kind], kind, n)
		}
	}
	report(t, "manifests", CheckCluster(c, r))
	report(t, "kustomization", CheckKustomization(K8sDir, c.Objects))
}

// loadEngines is what `kubectl apply -k deploy/k8s-engines` applies: the
// base and the overlay's own manifests (returned apart too).
func loadEngines(t *testing.T) (*Cluster, Rbee, []Object) {
	t.Helper()
	base, r := load(t)
	own, err := LoadManifests(EnginesDir)
	if err != nil {
		t.Fatal(err)
	}
	return NewCluster(append(slices.Clone(base.Objects), own...)), r, own
}

func TestEnginesOverlay(t *testing.T) {
	c, r, own := loadEngines(t)
	kinds := map[string]int{}
	for _, o := range own {
		kinds[o.Kind]++
	}
	if len(own) != 2 || kinds["StatefulSet"] != 1 || kinds["PodDisruptionBudget"] != 1 {
		t.Errorf("the overlay holds %v, want a StatefulSet and its PodDisruptionBudget", kinds)
	}
	report(t, "engines overlay", CheckCluster(c, r))
	report(t, "engines kustomization", CheckKustomization(EnginesDir, own))
	k := readFile(t, EnginesDir, KustomizationFile)
	if !strings.Contains(k, "\n  - ../k8s\n") {
		t.Errorf("%s/%s does not build on the base (resources: ../k8s)", EnginesDir, KustomizationFile)
	}
}

func TestNodeUnit(t *testing.T) {
	report(t, "rbee.service", CheckNodeUnit(parseUnit(t, "rbee.service")))
}

func TestWorkerUnit(t *testing.T) {
	report(t, "rbee-worker@.service", CheckWorkerUnit(parseUnit(t, "rbee-worker@.service")))
}

func TestHiveUnit(t *testing.T) {
	e := parseFile(t, SystemdDir, "rbee.env", ParseEnvFile)
	report(t, "rbee-hive.service", CheckHiveUnit(parseUnit(t, "rbee-hive.service"), e))
}

func TestEnvFile(t *testing.T) {
	e := parseFile(t, SystemdDir, "rbee.env", ParseEnvFile)
	_, r := load(t)
	nodeVars, err := NodeRunEnvVars(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	report(t, "rbee.env", CheckEnvFile(e, r.EnvVars, nodeVars))
}

// TestUnitsVerify runs systemd's own checker where it is installed (Debian's
// systemd package; CI's machine has it). verify wants the ExecStart binary
// to exist, so the units are checked from copies that run a stub in its
// place; any word from it (an unknown key, a bad value) fails.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed; the units' keys are still checked by TestNodeUnit, TestHiveUnit and TestWorkerUnit")
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "rbee")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var units []string
	for name, as := range map[string]string{"rbee.service": "rbee.service", "rbee-hive.service": "rbee-hive.service", "rbee-worker@.service": "rbee-worker@8080.service"} {
		b, err := os.ReadFile(filepath.Join(SystemdDir, name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, as)
		if err := os.WriteFile(p, bytes.ReplaceAll(b, []byte(BinPath), []byte(stub)), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, units...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestDockerfile(t *testing.T) {
	goVer, err := GoVersion(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	_, errs := CheckDockerfile(parseDockerfile(t), goVer)
	report(t, "Dockerfile", errs)

	script := filepath.Join(DockerDir, "build-binary.sh")
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	report(t, "build-binary.sh", CheckBuildScript(string(b)))
	if fi, err := os.Stat(script); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("%s is not executable", script)
	}
}

// TestEnvVarsFound guards the source scan behind RbeeEnvVars: it must find
// the flags of `rbee node run` that README documents.
func TestEnvVarsFound(t *testing.T) {
	vars, err := RbeeEnvVars(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range strings.Fields("RBEE_NAME RBEE_JOIN RBEE_ROLES RBEE_DATA_DIR RBEE_ADVERTISE_ADDR RBEE_CGROUP_ROOT RBEE_LOG_FORMAT RBEE_WORKER") {
		if !vars[v] {
			t.Errorf("RbeeEnvVars misses %s", v)
		}
	}
	nodeVars, err := NodeRunEnvVars(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range strings.Fields("RBEE_NAME RBEE_MODEL RBEE_MODELS_DIR RBEE_ENGINE RBEE_API_KEYS RBEE_API_KEYS_FILE RBEE_CONFIG RBEE_CGROUP_ROOT RBEE_SIM_GPUS") {
		if !nodeVars[v] {
			t.Errorf("NodeRunEnvVars misses %s", v)
		}
	}
	// `rbee worker simulate`'s, and the alias of RBEE_API_KEYS.
	for _, v := range strings.Fields("RBEE_SIM_MODEL RBEE_SIM_SLOTS RBEE_API_KEY") {
		if nodeVars[v] {
			t.Errorf("NodeRunEnvVars has %s, which is no `rbee node run` setting of its own", v)
		}
	}
}

// TestKustomizeBuilds builds both kustomizations with kubectl's kustomize
// where kubectl is installed (an overlay inside its base, for one, is a
// cycle kustomize refuses), and wants every manifest but the Secret in the
// output.
func TestKustomizeBuilds(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed; the kustomizations' lists are still checked by TestManifests and TestEnginesOverlay")
	}
	base, _ := load(t)
	engines, _, _ := loadEngines(t)
	for dir, c := range map[string]*Cluster{K8sDir: base, EnginesDir: engines} {
		out, err := exec.Command(kubectl, "kustomize", dir).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Errorf("kubectl kustomize %s: %v\n%s", dir, err, stderr)
			continue
		}
		want := len(c.Objects) - len(c.Secrets)
		if got := len(SplitDocuments(out)); got != want {
			t.Errorf("kubectl kustomize %s: %d objects, want %d (every manifest but the Secret)", dir, got, want)
		}
	}
}
