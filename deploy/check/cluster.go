package check

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// What the manifests must agree with in rbee itself.
const (
	HTTPPort   = 7833 // --http-addr's default port: the API and /healthz
	GossipPort = 7946 // --gossip-addr's default port, TCP and UDP
	HealthPath = "/healthz"
	// ReadyPath is readiness: 503 until the node follows a queen that
	// knows the cluster; HealthPath is liveness.
	ReadyPath    = "/readyz"
	DrainSeconds = 10 // how long a stopping node lets requests in flight finish
	// GPUResource is the NVIDIA device plugin's resource.
	GPUResource   = corev1.ResourceName("nvidia.com/gpu")
	AppLabel      = "app.kubernetes.io/name"
	AppName       = "rbee"
	ClusterDomain = "cluster.local"
)

// Workload is a DaemonSet, a Deployment or a StatefulSet: what the checks
// need of any.
type Workload struct {
	Object
	Selector *metav1.LabelSelector
	Pod      *corev1.PodTemplateSpec
	// Replicas of a Deployment or StatefulSet (1 when unset); 0 for a
	// DaemonSet.
	Replicas int32
	// Claims are a StatefulSet's volumeClaimTemplates: volumes its pods
	// mount by name.
	Claims []corev1.PersistentVolumeClaim
	// ServiceName is a StatefulSet's governing Service.
	ServiceName string
}

// Cluster is every manifest, sorted by kind.
type Cluster struct {
	Objects    []Object
	Namespaces []*corev1.Namespace
	Secrets    map[string]*corev1.Secret
	ConfigMaps map[string]*corev1.ConfigMap
	Services   []*corev1.Service
	Workloads  []Workload
	PDBs       []*policyv1.PodDisruptionBudget
}

// NewCluster sorts objs by kind.
func NewCluster(objs []Object) *Cluster {
	c := &Cluster{Objects: objs, Secrets: map[string]*corev1.Secret{}, ConfigMaps: map[string]*corev1.ConfigMap{}}
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *corev1.Namespace:
			c.Namespaces = append(c.Namespaces, v)
		case *corev1.Secret:
			c.Secrets[v.Name] = v
		case *corev1.ConfigMap:
			c.ConfigMaps[v.Name] = v
		case *corev1.Service:
			c.Services = append(c.Services, v)
		case *appsv1.DaemonSet:
			c.Workloads = append(c.Workloads, Workload{Object: o, Selector: v.Spec.Selector, Pod: &v.Spec.Template})
		case *appsv1.Deployment:
			c.Workloads = append(c.Workloads, Workload{Object: o, Selector: v.Spec.Selector, Pod: &v.Spec.Template, Replicas: replicas(v.Spec.Replicas)})
		case *appsv1.StatefulSet:
			c.Workloads = append(c.Workloads, Workload{Object: o, Selector: v.Spec.Selector, Pod: &v.Spec.Template, Replicas: replicas(v.Spec.Replicas),
				Claims: v.Spec.VolumeClaimTemplates, ServiceName: v.Spec.ServiceName})
		case *policyv1.PodDisruptionBudget:
			c.PDBs = append(c.PDBs, v)
		}
	}
	return c
}

func replicas(n *int32) int32 {
	if n == nil {
		return 1
	}
	return *n
}

// Rbee is what the checks know of rbee and its image.
type Rbee struct {
	// EnvVars are the variables rbee's flags read (RbeeEnvVars).
	EnvVars map[string]bool
	// ImageUID is the uid the image runs as (its Dockerfile's USER).
	ImageUID int64
}

// CheckCluster runs every check over the manifests and returns what failed.
func CheckCluster(c *Cluster, r Rbee) []error {
	var errs []error
	for _, check := range []func(*Cluster, Rbee) []error{
		checkMetadata, checkSelectors, checkServices, checkProbes, checkGrace,
		checkReferences, checkEnv, checkRoles, checkSecretIsPlaceholder,
		checkDisruptionBudgets, checkMetricsReachable,
	} {
		errs = append(errs, check(c, r)...)
	}
	return errs
}

// checkMetadata: one namespace, every object in it, valid names and labels,
// every object labelled as rbee's.
func checkMetadata(c *Cluster, _ Rbee) []error {
	var errs []error
	if len(c.Namespaces) != 1 {
		return []error{fmt.Errorf("want one Namespace, have %d", len(c.Namespaces))}
	}
	ns := c.Namespaces[0].Name
	for _, o := range c.Objects {
		if o.Kind != "Namespace" && o.Meta.Namespace != ns {
			errs = append(errs, fmt.Errorf("%s: namespace %q, not %q", o, o.Meta.Namespace, ns))
		}
		for _, msg := range validation.IsDNS1123Label(o.Meta.Name) {
			errs = append(errs, fmt.Errorf("%s: name: %s", o, msg))
		}
		errs = append(errs, checkLabels(o.String(), o.Meta.Labels)...)
		if o.Meta.Labels[AppLabel] != AppName {
			errs = append(errs, fmt.Errorf("%s: no label %s=%s", o, AppLabel, AppName))
		}
	}
	return errs
}

func checkLabels(where string, l map[string]string) []error {
	var errs []error
	for k, v := range l {
		for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
			errs = append(errs, fmt.Errorf("%s: label %s=%s: %s", where, k, v, msg))
		}
	}
	return errs
}

// checkSelectors: each workload's selector selects its own pods.
func checkSelectors(c *Cluster, _ Rbee) []error {
	var errs []error
	for _, w := range c.Workloads {
		errs = append(errs, checkLabels(w.String()+" pod template", w.Pod.Labels)...)
		sel, err := metav1.LabelSelectorAsSelector(w.Selector)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: selector: %w", w, err))
		case w.Selector == nil || sel.Empty():
			errs = append(errs, fmt.Errorf("%s: empty selector", w))
		case !sel.Matches(labels.Set(w.Pod.Labels)):
			errs = append(errs, fmt.Errorf("%s: selector %s does not match its pods' labels %v", w, sel, w.Pod.Labels))
		}
	}
	return errs
}

// selects lists the workloads whose pods a Service selects.
func (c *Cluster) selects(s *corev1.Service) []Workload {
	var out []Workload
	for _, w := range c.Workloads {
		if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.Pod.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

// checkServices: each Service selects pods, and each of its ports is a port
// of every container it selects, by name and protocol, with the same number.
func checkServices(c *Cluster, _ Rbee) []error {
	var errs []error
	for _, s := range c.Services {
		ws := c.selects(s)
		if len(ws) == 0 {
			errs = append(errs, fmt.Errorf("Service %s: selector %v selects no workload's pods", s.Name, s.Spec.Selector))
		}
		for _, sp := range s.Spec.Ports {
			for _, msg := range validation.IsValidPortName(sp.Name) {
				errs = append(errs, fmt.Errorf("Service %s: port name %q: %s", s.Name, sp.Name, msg))
			}
			for _, w := range ws {
				cp, ok := findPort(w.Pod.Spec, sp.TargetPort.String(), sp.Protocol)
				switch {
				case !ok:
					errs = append(errs, fmt.Errorf("Service %s: port %s targets %s/%s, which %s's pods do not have", s.Name, sp.Name, sp.TargetPort.String(), sp.Protocol, w.Meta.Name))
				case cp.ContainerPort != sp.Port:
					errs = append(errs, fmt.Errorf("Service %s: port %s is %d, %s's container port is %d", s.Name, sp.Name, sp.Port, w.Meta.Name, cp.ContainerPort))
				}
			}
		}
	}
	return errs
}

// findPort finds a container port by name or number, and protocol.
func findPort(pod corev1.PodSpec, target string, proto corev1.Protocol) (corev1.ContainerPort, bool) {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	for _, ctr := range pod.Containers {
		for _, p := range ctr.Ports {
			pp := p.Protocol
			if pp == "" {
				pp = corev1.ProtocolTCP
			}
			if pp == proto && (p.Name == target || strconv.Itoa(int(p.ContainerPort)) == target) {
				return p, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

// checkProbes: every container has a readiness probe on /readyz and a
// liveness probe on /healthz at the API port, and valid, unique port names.
func checkProbes(c *Cluster, _ Rbee) []error {
	var errs []error
	for _, w := range c.Workloads {
		for _, ctr := range w.Pod.Spec.Containers {
			where := fmt.Sprintf("%s container %s", w, ctr.Name)
			seen := map[string]bool{}
			for _, p := range ctr.Ports {
				for _, msg := range validation.IsValidPortName(p.Name) {
					errs = append(errs, fmt.Errorf("%s: port name %q: %s", where, p.Name, msg))
				}
				if seen[p.Name] {
					errs = append(errs, fmt.Errorf("%s: port name %q twice", where, p.Name))
				}
				seen[p.Name] = true
			}
			for kind, pr := range map[string]*corev1.Probe{"readinessProbe": ctr.ReadinessProbe, "livenessProbe": ctr.LivenessProbe} {
				if pr == nil || pr.HTTPGet == nil {
					errs = append(errs, fmt.Errorf("%s: no %s with httpGet", where, kind))
					continue
				}
				g := pr.HTTPGet
				want := HealthPath
				if kind == "readinessProbe" {
					want = ReadyPath
				}
				port, ok := findPort(w.Pod.Spec, g.Port.String(), corev1.ProtocolTCP)
				if g.Path != want || !ok || port.ContainerPort != HTTPPort || (g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP) {
					errs = append(errs, fmt.Errorf("%s: %s is %s %s on port %s, want HTTP %s on %d", where, kind, g.Scheme, g.Path, g.Port.String(), want, HTTPPort))
				}
			}
		}
	}
	return errs
}

// checkGrace: pods get longer than rbee's drain to stop.
func checkGrace(c *Cluster, _ Rbee) []error {
	var errs []error
	for _, w := range c.Workloads {
		if g := w.Pod.Spec.TerminationGracePeriodSeconds; g == nil || *g <= DrainSeconds {
			errs = append(errs, fmt.Errorf("%s: terminationGracePeriodSeconds must exceed rbee's %d s drain", w, DrainSeconds))
		} else if w.Kind == "StatefulSet" && *g <= DrainSeconds+EngineStopSeconds {
			errs = append(errs, fmt.Errorf("%s: terminationGracePeriodSeconds must exceed rbee's %d s drain plus %d s for its engines to stop", w, DrainSeconds, EngineStopSeconds))
		}
	}
	return errs
}

// checkReferences: the Secrets, their keys and the ConfigMaps the pods use exist.
func checkReferences(c *Cluster, _ Rbee) []error {
	var errs []error
	for _, w := range c.Workloads {
		for _, v := range w.Pod.Spec.Volumes {
			if v.Secret == nil {
				continue
			}
			s, ok := c.Secrets[v.Secret.SecretName]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: volume %s: no Secret %s", w, v.Name, v.Secret.SecretName))
				continue
			}
			for _, it := range v.Secret.Items {
				if !secretHas(s, it.Key) {
					errs = append(errs, fmt.Errorf("%s: volume %s: Secret %s has no key %s", w, v.Name, s.Name, it.Key))
				}
			}
		}
		for _, ctr := range w.Pod.Spec.Containers {
			for _, ef := range ctr.EnvFrom {
				if ef.ConfigMapRef != nil && c.ConfigMaps[ef.ConfigMapRef.Name] == nil {
					errs = append(errs, fmt.Errorf("%s: envFrom: no ConfigMap %s", w, ef.ConfigMapRef.Name))
				}
				if ef.SecretRef != nil && c.Secrets[ef.SecretRef.Name] == nil {
					errs = append(errs, fmt.Errorf("%s: envFrom: no Secret %s", w, ef.SecretRef.Name))
				}
			}
		}
	}
	return errs
}

func secretHas(s *corev1.Secret, key string) bool {
	_, a := s.StringData[key]
	_, b := s.Data[key]
	return a || b
}

// containerEnv is what a container's environment will hold, in order of
// definition: its envFrom ConfigMaps, then its env (literal values; values
// from the downward API are named by their field path in braces).
func (c *Cluster) containerEnv(ctr corev1.Container) (names []string, values map[string]string) {
	values = map[string]string{}
	add := func(k, v string) {
		if _, ok := values[k]; !ok {
			names = append(names, k)
		}
		values[k] = v
	}
	for _, ef := range ctr.EnvFrom {
		if ef.ConfigMapRef != nil && c.ConfigMaps[ef.ConfigMapRef.Name] != nil {
			data := c.ConfigMaps[ef.ConfigMapRef.Name].Data
			for _, k := range slices.Sorted(maps.Keys(data)) {
				add(ef.Prefix+k, data[k])
			}
		}
	}
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			v = "{" + e.ValueFrom.FieldRef.FieldPath + "}"
		}
		add(e.Name, v)
	}
	return names, values
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkEnv: every RBEE_* variable is one rbee reads, every $(VAR) is defined
// before it is used, and the paths and addresses the variables name exist:
// the key file in the Secret's mount, the data directory on a writable volume,
// the cgroup root on the host's cgroup tree, the join address on the headless
// Service that selects every rbee pod.
func checkEnv(c *Cluster, r Rbee) []error {
	var errs []error
	for _, cm := range c.ConfigMaps {
		for k := range cm.Data {
			if strings.HasPrefix(k, "RBEE_") && !r.EnvVars[k] {
				errs = append(errs, fmt.Errorf("ConfigMap %s: rbee reads no variable %s", cm.Name, k))
			}
		}
	}
	for _, w := range c.Workloads {
		for _, ctr := range w.Pod.Spec.Containers {
			where := fmt.Sprintf("%s container %s", w, ctr.Name)
			names, env := c.containerEnv(ctr)
			for i, k := range names {
				if strings.HasPrefix(k, "RBEE_") && !r.EnvVars[k] {
					errs = append(errs, fmt.Errorf("%s: rbee reads no variable %s", where, k))
				}
				for _, m := range varRef.FindAllStringSubmatch(env[k], -1) {
					if !slices.Contains(names[:i], m[1]) {
						errs = append(errs, fmt.Errorf("%s: %s uses $(%s), not defined before it", where, k, m[1]))
					}
				}
			}
			errs = append(errs, c.checkPaths(w, ctr, env)...)
			errs = append(errs, c.checkJoin(where, env["RBEE_JOIN"])...)
		}
	}
	return errs
}

// checkPaths checks the paths in a container's RBEE_* variables against its
// mounts.
func (c *Cluster) checkPaths(w Workload, ctr corev1.Container, env map[string]string) []error {
	where := fmt.Sprintf("%s container %s", w, ctr.Name)
	volumes := map[string]corev1.Volume{}
	for _, v := range w.Pod.Spec.Volumes {
		volumes[v.Name] = v
	}
	for _, pvc := range w.Claims {
		volumes[pvc.Name] = corev1.Volume{Name: pvc.Name, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name}}}
	}
	// mountOf finds the mount that holds p and its volume.
	mountOf := func(p string) (corev1.VolumeMount, corev1.Volume, bool) {
		for _, m := range ctr.VolumeMounts {
			if pathIn(p, m.MountPath) {
				return m, volumes[m.Name], true
			}
		}
		return corev1.VolumeMount{}, corev1.Volume{}, false
	}
	var errs []error
	if kf, ok := env["RBEE_CLUSTER_KEY_FILE"]; !ok {
		errs = append(errs, fmt.Errorf("%s: no RBEE_CLUSTER_KEY_FILE: without a key a node listens on loopback only", where))
	} else if m, v, ok := mountOf(kf); !ok || v.Secret == nil {
		errs = append(errs, fmt.Errorf("%s: RBEE_CLUSTER_KEY_FILE=%s is in no Secret volume", where, kf))
	} else if rel := strings.TrimPrefix(path.Clean(kf), path.Clean(m.MountPath)+"/"); !slices.ContainsFunc(v.Secret.Items, func(it corev1.KeyToPath) bool { return it.Path == rel }) {
		errs = append(errs, fmt.Errorf("%s: RBEE_CLUSTER_KEY_FILE=%s: volume %s has no item at path %s", where, kf, v.Name, rel))
	}
	if dd, ok := env["RBEE_DATA_DIR"]; ok {
		if m, _, ok := mountOf(dd); !ok || m.ReadOnly || m.MountPath != dd {
			errs = append(errs, fmt.Errorf("%s: RBEE_DATA_DIR=%s is not a writable volume's mount", where, dd))
		}
	}
	if cg, ok := env["RBEE_CGROUP_ROOT"]; ok && cg != "none" {
		if m, v, ok := mountOf(cg); !ok || m.MountPath != cg || v.HostPath == nil || v.HostPath.Path != "/sys/fs/cgroup" {
			errs = append(errs, fmt.Errorf("%s: RBEE_CGROUP_ROOT=%s is not the host's /sys/fs/cgroup mounted there", where, cg))
		}
	}
	// Where `rbee model pull` and copies write, on a volume that outlives
	// the container.
	if md, ok := env["RBEE_MODELS_DIR"]; ok {
		if m, v, ok := mountOf(md); !ok || m.ReadOnly || v.EmptyDir != nil {
			errs = append(errs, fmt.Errorf("%s: RBEE_MODELS_DIR=%s is on no writable persistent volume", where, md))
		}
	}
	return errs
}

// checkJoin: the join address is a headless Service of this namespace, on the
// gossip port, publishing pods before they are ready, and selecting every
// rbee workload.
func (c *Cluster) checkJoin(where, join string) []error {
	if join == "" {
		return []error{fmt.Errorf("%s: no RBEE_JOIN", where)}
	}
	host, port, err := net.SplitHostPort(join)
	if err != nil {
		return []error{fmt.Errorf("%s: RBEE_JOIN=%s: %w", where, join, err)}
	}
	for _, s := range c.Services {
		if host != fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, ClusterDomain) {
			continue
		}
		var errs []error
		if s.Spec.ClusterIP != corev1.ClusterIPNone || !s.Spec.PublishNotReadyAddresses {
			errs = append(errs, fmt.Errorf("%s: RBEE_JOIN names Service %s, which must be headless (clusterIP: None) and publishNotReadyAddresses", where, s.Name))
		}
		if port != strconv.Itoa(GossipPort) {
			errs = append(errs, fmt.Errorf("%s: RBEE_JOIN port %s, want the gossip port %d", where, port, GossipPort))
		}
		if got := c.selects(s); len(got) != len(c.Workloads) {
			errs = append(errs, fmt.Errorf("%s: RBEE_JOIN's Service %s selects %d of the %d workloads", where, s.Name, len(got), len(c.Workloads)))
		}
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == GossipPort && p.Protocol == proto }) {
				errs = append(errs, fmt.Errorf("Service %s: no %s port %d (gossip uses both TCP and UDP)", s.Name, proto, GossipPort))
			}
		}
		return errs
	}
	return []error{fmt.Errorf("%s: RBEE_JOIN=%s names no Service of these manifests", where, join)}
}

// checkRoles: the DaemonSet is the hives (GPU nodes, host network with
// cluster DNS, host pids, a host data directory); the Deployment is the
// entry-only nodes (--roles none, unprivileged as the image's user). Both run
// `rbee node run` from the same image.
func checkRoles(c *Cluster, r Rbee) []error {
	var errs []error
	images := map[string]bool{}
	for _, w := range c.Workloads {
		spec := w.Pod.Spec
		for _, ctr := range spec.Containers {
			// Engine hives run another image: rbee and the engines.
			if w.Kind != "StatefulSet" {
				images[ctr.Image] = true
			}
			if len(ctr.Command) > 0 || len(ctr.Args) < 2 || ctr.Args[0] != "node" || ctr.Args[1] != "run" {
				errs = append(errs, fmt.Errorf("%s: container %s must run the image's rbee with args node run ..., has command %v args %v", w, ctr.Name, ctr.Command, ctr.Args))
			}
		}
		roles := strings.Join(spec.Containers[0].Args, " ")
		switch w.Kind {
		case "DaemonSet":
			if spec.RuntimeClassName == nil || *spec.RuntimeClassName != "nvidia" || len(spec.NodeSelector) == 0 {
				errs = append(errs, fmt.Errorf("%s: hives need runtimeClassName nvidia and a nodeSelector for GPU nodes", w))
			}
			if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
				errs = append(errs, fmt.Errorf("%s: hives need hostNetwork with dnsPolicy ClusterFirstWithHostNet (else RBEE_JOIN's cluster name does not resolve)", w))
			}
			if !spec.HostPID {
				errs = append(errs, fmt.Errorf("%s: hives need hostPID: cgroup and NVML pids are host pids", w))
			}
			if strings.Contains(roles, "--roles") {
				errs = append(errs, fmt.Errorf("%s: hives keep the default roles (queen,hive), args %q", w, roles))
			}
			if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.HostPath != nil && v.HostPath.Path == "/var/lib/rbee" }) {
				errs = append(errs, fmt.Errorf("%s: hives keep --data-dir on the host (/var/lib/rbee)", w))
			}
		case "Deployment":
			if !strings.Contains(roles, "--roles none") {
				errs = append(errs, fmt.Errorf("%s: entry nodes run with --roles none, args %q", w, roles))
			}
			sc := spec.SecurityContext
			if spec.HostNetwork || sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != r.ImageUID {
				errs = append(errs, fmt.Errorf("%s: entry nodes run without host network, as the image's user %d (runAsNonRoot)", w, r.ImageUID))
			}
		case "StatefulSet":
			errs = append(errs, c.checkEngineHive(w)...)
		default:
			errs = append(errs, fmt.Errorf("%s: no role for a %s", w, w.Kind))
		}
	}
	if len(images) != 1 {
		errs = append(errs, fmt.Errorf("the hive DaemonSet and the entry Deployment use %d images, want one: %v", len(images), slices.Sorted(maps.Keys(images))))
	}
	return errs
}

// checkEngineHive: a StatefulSet is hives that start their engines as their
// own children (models on demand). In the pod network (the engines on the
// pod's loopback), with a catalog on a persistent volume, no cgroup of its
// own to make (RBEE_CGROUP_ROOT=none: a container cannot), shared memory
// for the engines' processes, the GPUs it asks for, a stable node name and a
// governing headless Service.
func (c *Cluster) checkEngineHive(w Workload) []error {
	var errs []error
	spec := w.Pod.Spec
	if spec.HostNetwork || spec.HostPID {
		errs = append(errs, fmt.Errorf("%s: engine hives use the pod network and pid namespace: their engines are their children", w))
	}
	if args := strings.Join(spec.Containers[0].Args, " "); strings.Contains(args, "--roles none") {
		errs = append(errs, fmt.Errorf("%s: engine hives are hives, args %q", w, args))
	}
	names, env := c.containerEnv(spec.Containers[0])
	if env["RBEE_MODELS_DIR"] == "" && env["RBEE_MODEL"] == "" {
		errs = append(errs, fmt.Errorf("%s: an engine hive needs a catalog: RBEE_MODELS_DIR or RBEE_MODEL", w))
	}
	if env["RBEE_CGROUP_ROOT"] != "none" {
		errs = append(errs, fmt.Errorf("%s: RBEE_CGROUP_ROOT=%q, want none: a container cannot make rbee.slice groups, and its engines are measured by pid", w, env["RBEE_CGROUP_ROOT"]))
	}
	// RBEE_NAME from the pod's name, which a StatefulSet keeps.
	name := varRef.ReplaceAllStringFunc(env["RBEE_NAME"], func(ref string) string {
		if v := varRef.FindStringSubmatch(ref)[1]; slices.Contains(names, v) {
			return env[v]
		}
		return ref
	})
	if name != "{metadata.name}" {
		errs = append(errs, fmt.Errorf("%s: RBEE_NAME=%q, want the pod's name (metadata.name): the hive keeps its name across restarts", w, env["RBEE_NAME"]))
	}
	shm := slices.ContainsFunc(spec.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.MountPath == "/dev/shm" && slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool {
			return v.Name == m.Name && v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory
		})
	})
	if !shm {
		errs = append(errs, fmt.Errorf("%s: no memory emptyDir at /dev/shm: a container's is 64 MiB, too small for vLLM's and NCCL's shared memory", w))
	}
	if spec.RuntimeClassName != nil && *spec.RuntimeClassName == "nvidia" {
		if q, ok := spec.Containers[0].Resources.Limits[GPUResource]; !ok || q.Cmp(resource.MustParse("1")) < 0 {
			errs = append(errs, fmt.Errorf("%s: runtimeClassName nvidia without a %s limit: the engines would get no GPU, or every GPU of the node", w, GPUResource))
		}
	}
	if !slices.ContainsFunc(c.Services, func(s *corev1.Service) bool {
		return s.Name == w.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone && slices.ContainsFunc(c.selects(s), func(x Workload) bool { return x.Meta.Name == w.Meta.Name })
	}) {
		errs = append(errs, fmt.Errorf("%s: serviceName %q is no headless Service of these manifests that selects its pods", w, w.ServiceName))
	}
	return errs
}

// checkDisruptionBudgets: every Deployment and StatefulSet has exactly one
// PodDisruptionBudget (with two, the eviction API refuses every eviction of
// the pods) that lets a drain take at least one pod at a time; every budget
// selects some workload's pods.
func checkDisruptionBudgets(c *Cluster, _ Rbee) []error {
	var errs []error
	for _, p := range c.PDBs {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil || p.Spec.Selector == nil || sel.Empty() {
			errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: empty or bad selector", p.Name))
			continue
		}
		if !slices.ContainsFunc(c.Workloads, func(w Workload) bool { return sel.Matches(labels.Set(w.Pod.Labels)) }) {
			errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: selector %s selects no workload's pods", p.Name, sel))
		}
	}
	for _, w := range c.Workloads {
		if w.Kind == "DaemonSet" {
			continue // drains skip DaemonSet pods
		}
		var mine []*policyv1.PodDisruptionBudget
		for _, p := range c.PDBs {
			if sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector); err == nil && !sel.Empty() && sel.Matches(labels.Set(w.Pod.Labels)) {
				mine = append(mine, p)
			}
		}
		if len(mine) != 1 {
			errs = append(errs, fmt.Errorf("%s: %d PodDisruptionBudgets select its pods, want one", w, len(mine)))
			continue
		}
		p := mine[0]
		switch {
		case p.Spec.MinAvailable != nil && p.Spec.MaxUnavailable != nil:
			errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: minAvailable and maxUnavailable both set", p.Name))
		case p.Spec.MaxUnavailable != nil:
			if n, err := intstrValue(p.Spec.MaxUnavailable, w.Replicas, true); err != nil || n < 1 {
				errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: maxUnavailable %s lets no pod of %s be evicted", p.Name, p.Spec.MaxUnavailable.String(), w.Meta.Name))
			}
		case p.Spec.MinAvailable != nil:
			if n, err := intstrValue(p.Spec.MinAvailable, w.Replicas, false); err != nil || n >= w.Replicas || n < 1 {
				errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: minAvailable %s of %s's %d replicas: want at least one pod kept and one evictable", p.Name, p.Spec.MinAvailable.String(), w.Meta.Name, w.Replicas))
			}
		default:
			errs = append(errs, fmt.Errorf("PodDisruptionBudget %s: neither minAvailable nor maxUnavailable", p.Name))
		}
	}
	return errs
}

// intstrValue is an absolute count or a percentage of total, rounded up as
// the disruption controller does.
func intstrValue(v *intstr.IntOrString, total int32, roundUp bool) (int32, error) {
	n, err := intstr.GetScaledValueFromIntOrPercent(v, int(total), roundUp)
	return int32(n), err
}

// checkSecretIsPlaceholder: no real cluster key is committed. A key is 32
// random bytes in base64, as `rbee keygen` prints it.
func checkSecretIsPlaceholder(c *Cluster, _ Rbee) []error {
	var errs []error
	for _, s := range c.Secrets {
		for k, v := range s.StringData {
			if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v)); err == nil && len(b) == 32 {
				errs = append(errs, fmt.Errorf("Secret %s: %s looks like a real cluster key; commit a placeholder", s.Name, k))
			}
		}
		if len(s.Data) > 0 {
			errs = append(errs, fmt.Errorf("Secret %s: data holds values; commit only a placeholder in stringData", s.Name))
		}
	}
	return errs
}

// pathIn reports whether p is dir or below it.
func pathIn(p, dir string) bool {
	p, dir = path.Clean(p), path.Clean(dir)
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// checkMetricsReachable: a headless Service lists every rbee pod's API port,
// so that Prometheus can scrape each one. The cluster's gauges come from the
// queen alone, a hive, which the Service rbee (entry pods) never reaches.
func checkMetricsReachable(c *Cluster, _ Rbee) []error {
	for _, s := range c.Services {
		if s.Spec.ClusterIP != corev1.ClusterIPNone || len(c.selects(s)) != len(c.Workloads) {
			continue
		}
		for _, p := range s.Spec.Ports {
			if p.Port == HTTPPort && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
				return nil
			}
		}
	}
	return []error{fmt.Errorf("no headless Service selects every workload with port %d: the queen's metrics (rbee_queue_depth, rbee_worker_*) cannot be scraped, the entry Service reaches only entry pods", HTTPPort)}
}
