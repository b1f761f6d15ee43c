package check

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The checks must catch what they claim to: each case breaks one real file
// or object and expects a failure.

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// replaceOnce replaces old, which must occur in s.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("%q not found", old)
	}
	return strings.Replace(s, old, new, 1)
}

func TestDecodeIsStrict(t *testing.T) {
	ds := readFile(t, K8sDir, "hive-daemonset.yaml")
	if _, _, _, err := Decode([]byte(ds)); err != nil {
		t.Fatalf("the DaemonSet as it is: %v", err)
	}
	for name, broken := range map[string]string{
		"misspelled field": replaceOnce(t, ds, "nodeSelector:", "nodeSelecter:"),
		"misplaced field":  replaceOnce(t, ds, "  updateStrategy:", "  hostNetwork: true\n  updateStrategy:"),
		"repeated key":     replaceOnce(t, ds, "      hostPID: true", "      hostPID: true\n      hostPID: true"),
		"wrong type":       replaceOnce(t, ds, "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: thirty"),
		"bad quantity":     replaceOnce(t, ds, "memory: 1Gi", "memory: 1 gigabyte"),
		"unknown kind":     replaceOnce(t, ds, "kind: DaemonSet", "kind: DaemonSets"),
	} {
		if _, _, _, err := Decode([]byte(broken)); err == nil {
			t.Errorf("%s: decoded without an error", name)
		}
	}
}

func TestSplitDocuments(t *testing.T) {
	docs := SplitDocuments([]byte("# only a comment\n---\na: 1\n---\n\n---\nb: 2\n--- \n"))
	if len(docs) != 2 || string(docs[0]) != "a: 1\n" || string(docs[1]) != "b: 2\n" {
		t.Errorf("got %q", docs)
	}
}

// joined is every error's text, one a line ("" for none).
func joined(errs []error) string {
	if err := errors.Join(errs...); err != nil {
		return err.Error()
	}
	return ""
}

// wantFailure runs CheckCluster on the manifests after break changed them,
// and wants an error that mentions want.
func wantFailure(t *testing.T, want string, breakIt func(c *Cluster)) {
	t.Helper()
	c, r := load(t)
	breakIt(c)
	errs := CheckCluster(c, r)
	if !strings.Contains(joined(errs), want) {
		t.Errorf("want an error about %q, got %v", want, errs)
	}
}

func workload(t *testing.T, c *Cluster, kind string) Workload {
	t.Helper()
	for _, w := range c.Workloads {
		if w.Kind == kind {
			return w
		}
	}
	t.Fatalf("no %s", kind)
	return Workload{}
}

func service(t *testing.T, c *Cluster, name string) *corev1.Service {
	t.Helper()
	for _, s := range c.Services {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no Service %s", name)
	return nil
}

func TestCrossReferencesAreChecked(t *testing.T) {
	cases := []struct {
		want    string
		breakIt func(t *testing.T, c *Cluster)
	}{
		{"does not match its pods' labels", func(t *testing.T, c *Cluster) {
			workload(t, c, "Deployment").Pod.Labels["app.kubernetes.io/component"] = "api"
		}},
		{"which rbee-entry's pods do not have", func(t *testing.T, c *Cluster) {
			service(t, c, "rbee").Spec.Ports[0].TargetPort = intstr.FromString("htp")
		}},
		{"selects no workload's pods", func(t *testing.T, c *Cluster) {
			service(t, c, "rbee").Spec.Selector["app.kubernetes.io/component"] = "gateway"
		}},
		{"no Secret rbee-key", func(t *testing.T, c *Cluster) {
			workload(t, c, "DaemonSet").Pod.Spec.Volumes[0].Secret.SecretName = "rbee-key"
		}},
		{"no ConfigMap rbee-settings", func(t *testing.T, c *Cluster) {
			workload(t, c, "DaemonSet").Pod.Spec.Containers[0].EnvFrom[0].ConfigMapRef.Name = "rbee-settings"
		}},
		{"want HTTP /healthz on 7833", func(t *testing.T, c *Cluster) {
			workload(t, c, "Deployment").Pod.Spec.Containers[0].LivenessProbe.HTTPGet.Path = "/health"
		}},
		{"want HTTP /readyz on 7833", func(t *testing.T, c *Cluster) {
			workload(t, c, "DaemonSet").Pod.Spec.Containers[0].ReadinessProbe.HTTPGet.Path = "/healthz"
		}},
		{"must exceed rbee's 10 s drain", func(t *testing.T, c *Cluster) {
			ten := int64(10)
			workload(t, c, "DaemonSet").Pod.Spec.TerminationGracePeriodSeconds = &ten
		}},
		{"rbee reads no variable RBEE_CLUSTER_KEYFILE", func(t *testing.T, c *Cluster) {
			c.ConfigMaps["rbee-config"].Data["RBEE_CLUSTER_KEYFILE"] = "/etc/rbee/key"
		}},
		{"is in no Secret volume", func(t *testing.T, c *Cluster) {
			c.ConfigMaps["rbee-config"].Data["RBEE_CLUSTER_KEY_FILE"] = "/etc/rbee-key"
		}},
		{"names no Service of these manifests", func(t *testing.T, c *Cluster) {
			c.ConfigMaps["rbee-config"].Data["RBEE_JOIN"] = "rbee-peers.rbee.svc.cluster.local:7946"
		}},
		{"must be headless", func(t *testing.T, c *Cluster) {
			service(t, c, "rbee-gossip").Spec.PublishNotReadyAddresses = false
		}},
		{"not defined before it", func(t *testing.T, c *Cluster) {
			env := workload(t, c, "Deployment").Pod.Spec.Containers[0].Env
			env[0], env[1] = env[1], env[0]
		}},
		{"ClusterFirstWithHostNet", func(t *testing.T, c *Cluster) {
			workload(t, c, "DaemonSet").Pod.Spec.DNSPolicy = corev1.DNSClusterFirst
		}},
		{"entry nodes run with --roles none", func(t *testing.T, c *Cluster) {
			workload(t, c, "Deployment").Pod.Spec.Containers[0].Args = []string{"node", "run"}
		}},
		{"as the image's user", func(t *testing.T, c *Cluster) {
			uid := int64(1000)
			workload(t, c, "Deployment").Pod.Spec.SecurityContext.RunAsUser = &uid
		}},
		{"use 2 images", func(t *testing.T, c *Cluster) {
			workload(t, c, "DaemonSet").Pod.Spec.Containers[0].Image = "rbee:other"
		}},
		{"looks like a real cluster key", func(t *testing.T, c *Cluster) {
			c.Secrets["rbee-cluster-key"].StringData["key"] = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
		}},
		{"namespace \"default\"", func(t *testing.T, c *Cluster) {
			c.ConfigMaps["rbee-config"].Namespace = "default"
		}},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			wantFailure(t, tc.want, func(c *Cluster) { tc.breakIt(t, c) })
		})
	}
}

func pdb(t *testing.T, c *Cluster, name string) *policyv1.PodDisruptionBudget {
	t.Helper()
	for _, p := range c.PDBs {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("no PodDisruptionBudget %s", name)
	return nil
}

func TestBudgetsAndMetricsAreChecked(t *testing.T) {
	cases := []struct {
		want    string
		breakIt func(t *testing.T, c *Cluster)
	}{
		{"0 PodDisruptionBudgets select its pods", func(t *testing.T, c *Cluster) { c.PDBs = nil }},
		{"2 PodDisruptionBudgets select its pods", func(t *testing.T, c *Cluster) {
			c.PDBs = append(c.PDBs, pdb(t, c, "rbee-entry").DeepCopy())
		}},
		{"want at least one pod kept and one evictable", func(t *testing.T, c *Cluster) {
			two := intstr.FromInt32(2)
			pdb(t, c, "rbee-entry").Spec.MinAvailable = &two
		}},
		{"selects no workload's pods", func(t *testing.T, c *Cluster) {
			pdb(t, c, "rbee-entry").Spec.Selector.MatchLabels["app.kubernetes.io/component"] = "api"
		}},
		{"the queen's metrics", func(t *testing.T, c *Cluster) {
			service(t, c, "rbee-metrics").Spec.Selector["app.kubernetes.io/component"] = "entry"
		}},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			wantFailure(t, tc.want, func(c *Cluster) { tc.breakIt(t, c) })
		})
	}
}

func TestEngineHiveIsChecked(t *testing.T) {
	sts := func(t *testing.T, c *Cluster) Workload { return workload(t, c, "StatefulSet") }
	setEnv := func(w Workload, name, value string) {
		env := w.Pod.Spec.Containers[0].Env
		for i := range env {
			if env[i].Name == name {
				env[i].Value = value
			}
		}
	}
	cases := []struct {
		want    string
		breakIt func(t *testing.T, c *Cluster)
	}{
		{"want none", func(t *testing.T, c *Cluster) { setEnv(sts(t, c), "RBEE_CGROUP_ROOT", "/sys/fs/cgroup") }},
		{"use the pod network", func(t *testing.T, c *Cluster) { sts(t, c).Pod.Spec.HostNetwork = true }},
		{"no memory emptyDir at /dev/shm", func(t *testing.T, c *Cluster) {
			for i, v := range sts(t, c).Pod.Spec.Volumes {
				if v.Name == "dshm" {
					sts(t, c).Pod.Spec.Volumes[i].EmptyDir.Medium = ""
				}
			}
		}},
		{"without a nvidia.com/gpu limit", func(t *testing.T, c *Cluster) {
			delete(sts(t, c).Pod.Spec.Containers[0].Resources.Limits, GPUResource)
		}},
		{"RBEE_MODELS_DIR=/cache is on no writable persistent volume", func(t *testing.T, c *Cluster) { setEnv(sts(t, c), "RBEE_MODELS_DIR", "/cache") }},
		{"needs a catalog", func(t *testing.T, c *Cluster) { setEnv(sts(t, c), "RBEE_MODELS_DIR", "") }},
		{"want the pod's name", func(t *testing.T, c *Cluster) { setEnv(sts(t, c), "RBEE_NAME", "hive") }},
		{"is no headless Service", func(t *testing.T, c *Cluster) {
			for i := range c.Workloads {
				if c.Workloads[i].Kind == "StatefulSet" {
					c.Workloads[i].ServiceName = "rbee"
				}
			}
		}},
		{"for its engines to stop", func(t *testing.T, c *Cluster) {
			g := int64(DrainSeconds + EngineStopSeconds)
			sts(t, c).Pod.Spec.TerminationGracePeriodSeconds = &g
		}},
		{"want HTTP /readyz on 7833", func(t *testing.T, c *Cluster) {
			sts(t, c).Pod.Spec.Containers[0].ReadinessProbe.HTTPGet.Path = "/healthz"
		}},
		{"0 PodDisruptionBudgets select its pods", func(t *testing.T, c *Cluster) {
			c.PDBs = slices.DeleteFunc(c.PDBs, func(p *policyv1.PodDisruptionBudget) bool { return p.Name == "rbee-engine-hive" })
		}},
		{"lets no pod of rbee-engine-hive be evicted", func(t *testing.T, c *Cluster) {
			zero := intstr.FromInt32(0)
			pdb(t, c, "rbee-engine-hive").Spec.MaxUnavailable = &zero
		}},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			c, r, _ := loadEngines(t)
			tc.breakIt(t, c)
			if errs := CheckCluster(c, r); !strings.Contains(joined(errs), tc.want) {
				t.Errorf("want an error about %q, got %v", tc.want, errs)
			}
		})
	}
}

func TestKustomizationRefusesTheSecret(t *testing.T) {
	objs, err := LoadManifests(K8sDir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	k := readFile(t, K8sDir, KustomizationFile)
	k = replaceOnce(t, k, "  - namespace.yaml\n", "  - namespace.yaml\n  - secret.yaml\n")
	if err := os.WriteFile(filepath.Join(dir, KustomizationFile), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	if errs := CheckKustomization(dir, objs); len(errs) == 0 {
		t.Error("a kustomization that applies the placeholder Secret passed")
	}
}

func TestUnitChecksCatch(t *testing.T) {
	node := readFile(t, SystemdDir, "rbee.service")
	for want, broken := range map[string]string{
		"TimeoutStopSec":          replaceOnce(t, node, "TimeoutStopSec=30s", "TimeoutStopSec=5s"),
		"PrivateDevices":          replaceOnce(t, node, "PrivateTmp=yes", "PrivateTmp=yes\nPrivateDevices=yes"),
		"ProtectControlGroups":    replaceOnce(t, node, "\nProtectControlGroups=yes\n", "\nProtectControlGroups=private\n"),
		"AF_NETLINK":              replaceOnce(t, node, "AF_UNIX AF_NETLINK\n", "AF_UNIX\n"),
		"DeviceAllow=char-nvidia": replaceOnce(t, node, "DeviceAllow=char-nvidia* rw", ""),
		"Delegate":                replaceOnce(t, node, "Type=exec", "Type=exec\nDelegate=yes"),
	} {
		u, err := ParseUnit([]byte(broken))
		if err != nil {
			t.Fatal(err)
		}
		if errs := CheckNodeUnit(u); !strings.Contains(joined(errs), want) {
			t.Errorf("%s: want an error about it, got %v", want, errs)
		}
	}
	worker := readFile(t, SystemdDir, "rbee-worker@.service")
	u, err := ParseUnit([]byte(replaceOnce(t, worker, "NoNewPrivileges=yes", "NoNewPrivileges=yes\nProtectControlGroups=yes")))
	if err != nil {
		t.Fatal(err)
	}
	if errs := CheckWorkerUnit(u); len(errs) == 0 {
		t.Error("a worker unit with read-only cgroups passed")
	}
	if _, err := ParseUnit([]byte("ExecStart=/bin/true\n")); err == nil {
		t.Error("a key outside any section parsed")
	}
}

func TestHiveUnitChecksCatch(t *testing.T) {
	hive := readFile(t, SystemdDir, "rbee-hive.service")
	env := parseFile(t, SystemdDir, "rbee.env", ParseEnvFile)
	for want, broken := range map[string]string{
		"MemoryDenyWriteExecute": replaceOnce(t, hive, "UMask=0077", "UMask=0077\nMemoryDenyWriteExecute=yes"),
		"SystemCallFilter":       replaceOnce(t, hive, "UMask=0077", "UMask=0077\nSystemCallFilter=@system-service"),
		"ProtectControlGroups":   replaceOnce(t, hive, "UMask=0077", "UMask=0077\nProtectControlGroups=yes"),
		"Delegate":               replaceOnce(t, hive, "\nDelegate=yes\n", "\nDelegate=no\n"),
		"KillMode":               replaceOnce(t, hive, "\nKillMode=mixed\n", "\n"),
		"must move the node out": replaceOnce(t, hive, "&& echo 0 > /sys/fs/cgroup/system.slice/%n/supervisor/cgroup.procs", ""),
		"--cgroup-root":          replaceOnce(t, hive, " --cgroup-root /sys/fs/cgroup/system.slice/%n'", "'"),
		"ReadWritePaths":         replaceOnce(t, hive, "ReadWritePaths=-/srv/models", "ReadWritePaths=-/var/lib/models"),
		"HOME":                   replaceOnce(t, hive, "Environment=HOME=/var/cache/rbee", ""),
		"ProtectHome":            replaceOnce(t, hive, "\nProtectHome=read-only\n", "\nProtectHome=yes\n"),
		"TimeoutStopSec":         replaceOnce(t, hive, "TimeoutStopSec=60s", "TimeoutStopSec=15s"),
		"LimitMEMLOCK":           replaceOnce(t, hive, "\nLimitMEMLOCK=infinity\n", "\n"),
		"Conflicts":              replaceOnce(t, hive, "Conflicts=rbee.service", ""),
	} {
		u, err := ParseUnit([]byte(broken))
		if err != nil {
			t.Fatal(err)
		}
		if errs := CheckHiveUnit(u, env); !strings.Contains(joined(errs), want) {
			t.Errorf("%s: want an error about it, got %v", want, errs)
		}
	}
	// The plain node unit, which the issue found engines started under.
	errs := joined(CheckHiveUnit(parseUnit(t, "rbee.service"), env))
	for _, want := range []string{"MemoryDenyWriteExecute", "SystemCallFilter", "ProtectControlGroups", "Delegate", "KillMode", "ReadWritePaths", "HOME"} {
		if !strings.Contains(errs, want) {
			t.Errorf("rbee.service as a hive unit: want an error about %s, got %s", want, errs)
		}
	}
	// The unit as it is, with rbee.env suggesting another models folder.
	moved, err := ParseEnvFile([]byte(strings.ReplaceAll(readFile(t, SystemdDir, "rbee.env"), "#RBEE_MODELS_DIR=/srv/models", "#RBEE_MODELS_DIR=/data/models")))
	if err != nil {
		t.Fatal(err)
	}
	if errs := CheckHiveUnit(parseUnit(t, "rbee-hive.service"), moved); !strings.Contains(joined(errs), "/data/models") {
		t.Errorf("a models folder the unit cannot write passed: %v", errs)
	}
}

func TestEnvFileChecksCatch(t *testing.T) {
	vars := map[string]bool{"RBEE_CLUSTER_KEY_FILE": true, "RBEE_JOIN": true, "RBEE_MODELS_DIR": true}
	nodeVars := map[string]bool{"RBEE_CLUSTER_KEY_FILE": true, "RBEE_MODELS_DIR": true}
	e, err := ParseEnvFile([]byte("# prose with KEY=value in it\nRBEE_CLUSTER_KEY_FILE=/etc/rbee/key\n#RBEE_JOINS=a:7946\n# RBEE_MODELS_DIR=/srv/models is prose\n"))
	if err != nil {
		t.Fatal(err)
	}
	errs := CheckEnvFile(e, vars, nodeVars)
	if len(errs) != 2 || !strings.Contains(joined(errs), "RBEE_JOINS") || !strings.Contains(joined(errs), "neither sets nor documents RBEE_MODELS_DIR") {
		t.Errorf("want errors about RBEE_JOINS and the missing RBEE_MODELS_DIR, got %v", errs)
	}
	// The file as it was before it listed the settings of engine hives.
	old := readFile(t, SystemdDir, "rbee.env")
	for _, v := range []string{"RBEE_MODEL", "RBEE_MODELS_DIR", "RBEE_ENGINE", "RBEE_API_KEYS_FILE", "RBEE_CONFIG"} {
		old = regexp.MustCompile(`(?m)^#`+v+`=.*\n`).ReplaceAllString(old, "")
	}
	e, err = ParseEnvFile([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	nodeVars, err = NodeRunEnvVars(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	got := joined(CheckEnvFile(e, vars, nodeVars))
	for _, v := range []string{"RBEE_MODEL,", "RBEE_MODELS_DIR", "RBEE_ENGINE", "RBEE_API_KEYS_FILE", "RBEE_CONFIG"} {
		if !strings.Contains(got+",", v) {
			t.Errorf("an rbee.env without %s passed: %s", strings.TrimSuffix(v, ","), got)
		}
	}
	if _, err := ParseEnvFile([]byte("export RBEE_JOIN=a:7946\n")); err == nil {
		t.Error("an `export` line parsed: systemd would not read it")
	}
}

func TestDockerfileChecksCatch(t *testing.T) {
	df := readFile(t, DockerDir, "Dockerfile")
	goVer, err := GoVersion(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for want, broken := range map[string]string{
		"no RUN bash deploy/docker/build-binary.sh": replaceOnce(t, df, "bash deploy/docker/build-binary.sh /out/rbee", `CGO_ENABLED=1 go build -o /out/rbee ./cmd/rbee`),
		"go build outside":                          replaceOnce(t, df, "bash deploy/docker/build-binary.sh /out/rbee", "bash deploy/docker/build-binary.sh /out/rbee && go build ./..."),
		"but go.mod says":                           replaceOnce(t, df, "golang:"+goVer+"-", "golang:1.20-"),
		"needs the glibc":                           replaceOnce(t, df, "FROM debian:bookworm-slim", "FROM debian:trixie-slim"),
		"no USER":                                   replaceOnce(t, df, "USER 10001:10001\n", ""),
		"EXPOSE lacks 7946/udp":                     replaceOnce(t, df, " 7946/udp", ""),
		"want the exec form":                        replaceOnce(t, df, `CMD ["node", "run"]`, "CMD node run"),
		"NVIDIA_DRIVER_CAPABILITIES":                replaceOnce(t, df, "=utility,compute", "=compute"),
	} {
		stages, err := ParseDockerfile([]byte(broken))
		if err != nil {
			t.Fatal(err)
		}
		if _, errs := CheckDockerfile(stages, goVer); !strings.Contains(joined(errs), want) {
			t.Errorf("%s: want an error about it, got %v", want, errs)
		}
	}
	if errs := CheckBuildScript("#!/bin/sh\ngo build -o \"$out\" ./cmd/rbee\n"); len(errs) == 0 {
		t.Error("a build script without cgo, -trimpath and -s -w passed")
	}
}
