// Package check validates rbee's deployment files in deploy/: the Kubernetes
// manifests, the systemd units and the container image's Dockerfile. It is a
// module of its own, so the Kubernetes API types it decodes into never reach
// rbee's own dependencies; CI runs it with
//
//	(cd deploy/check && go vet ./... && go test ./...)
//
// Why not kubeconform: it validates against JSON schemas that it downloads at
// run time from GitHub (raw.githubusercontent.com/yannh/kubernetes-json-schema),
// and CI reaches only the Go module proxy and the Debian and npm registries.
// The module itself installs, but the schemas cannot be had offline.
//
// Instead, every manifest is decoded strictly into the official API types
// (k8s.io/api, through sigs.k8s.io/yaml's UnmarshalStrict): an unknown,
// misspelled or misplaced field, a repeated key or a value of the wrong type
// fails, as it would on `kubectl apply --validate=strict`. Then the manifests
// are checked against each other and against rbee, which no schema can do:
// selectors match their pods' labels, Services' target ports exist in the pods
// they select, referenced Secrets, ConfigMaps and keys exist, probes hit
// /readyz (readiness) and /healthz (liveness) on 7833, the grace period exceeds rbee's 10 s drain, every RBEE_*
// variable set is one rbee reads (from its flags in cmd/rbee), the paths
// those variables name are mounted, every Deployment and StatefulSet has one
// PodDisruptionBudget that lets a drain proceed, and a headless Service
// reaches every pod's metrics (the queen's gauges come from one hive). The
// engine hives' overlay (deploy/k8s-engines) is checked together with the
// base it builds on; where kubectl is installed the tests also build both
// with `kubectl kustomize`. See CheckCluster for the list.
//
// The systemd units are parsed as plain INI and checked for the settings the
// deployment relies on (CheckNodeUnit, CheckHiveUnit: what engines started by
// the hive need, CheckWorkerUnit); rbee.env must list every variable of
// `rbee node run` (CheckEnvFile). Where systemd-analyze is installed the
// tests also run `systemd-analyze verify` on the units. The Dockerfile is parsed into stages and checked for what CI cannot
// build without a Docker engine (CheckDockerfile): its build stage runs
// deploy/docker/build-binary.sh, the script CI runs and starts.
package check
