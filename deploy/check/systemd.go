package check

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Unit is a systemd unit file: section, then key, then every value the key
// was given, in order (DeviceAllow= and others may repeat).
type Unit map[string]map[string][]string

// ParseUnit reads a unit file as systemd does for these purposes: [Section]
// headers, Key=Value lines, # and ; comments, trailing-backslash continuations.
func ParseUnit(b []byte) (Unit, error) {
	u := Unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	n, pending := 0, ""
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is neither a [Section] nor Key=Value in one", n, line)
		}
		k = strings.TrimSpace(k)
		u[section][k] = append(u[section][k], strings.TrimSpace(v))
	}
	return u, sc.Err()
}

// Last is the value a key ends with (a later assignment wins), or "".
func (u Unit) Last(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// All is every word given to a list-valued key (RestrictAddressFamilies=...).
func (u Unit) All(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// EnvFile is an environment file: the variables it sets, and those it
// documents in commented-out assignments (#RBEE_NAME=gpu-1, no space after
// the #: prose comments are not read).
type EnvFile struct {
	Set        map[string]string
	Documented []string
	// Examples are the values of the commented-out assignments.
	Examples map[string]string
}

var envAssign = regexp.MustCompile(`^(#?)([A-Z_][A-Z0-9_]*)=(.*)$`)

// ParseEnvFile reads KEY=value lines; other comment lines are skipped.
func ParseEnvFile(b []byte) (EnvFile, error) {
	e := EnvFile{Set: map[string]string{}, Examples: map[string]string{}}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		m := envAssign.FindStringSubmatch(line)
		switch {
		case m != nil && m[1] == "":
			e.Set[m[2]] = m[3]
		case m != nil:
			e.Documented = append(e.Documented, m[2])
			e.Examples[m[2]] = m[3]
		case line != "" && line[0] != '#':
			return e, fmt.Errorf("line %d: %q is no KEY=value", i+1, line)
		}
	}
	return e, nil
}

// Paths the node unit and its env file agree on with the rest of deploy/.
const (
	BinPath     = "/usr/local/bin/rbee"
	EnvFilePath = "/etc/rbee/rbee.env"
	KeyFilePath = "/etc/rbee/key"
	DataDir     = "/var/lib/rbee"
)

// CheckNodeUnit checks rbee.service for what the deployment relies on: how
// it starts and stops, where its state lives, and hardening that leaves the
// node what it needs (reading cgroups, /proc and the NVIDIA devices).
func CheckNodeUnit(u Unit) []error {
	var errs []error
	want := func(section, key, value string) {
		if got := u.Last(section, key); got != value {
			errs = append(errs, fmt.Errorf("[%s] %s=%q, want %q", section, key, got, value))
		}
	}
	if got := u.Last("Service", "ExecStart"); !strings.HasPrefix(got, BinPath+" node run") || !strings.Contains(got, "--data-dir "+DataDir) {
		errs = append(errs, fmt.Errorf("[Service] ExecStart=%q, want %s node run --data-dir %s", got, BinPath, DataDir))
	}
	want("Service", "EnvironmentFile", EnvFilePath)
	want("Service", "StateDirectory", "rbee") // DataDir, made writable under ProtectSystem=strict
	want("Service", "KillSignal", "SIGTERM")
	want("Service", "Restart", "on-failure")
	if d, err := time.ParseDuration(u.Last("Service", "TimeoutStopSec")); err != nil || d <= DrainSeconds*time.Second {
		errs = append(errs, fmt.Errorf("[Service] TimeoutStopSec=%q must be a duration above rbee's %d s drain", u.Last("Service", "TimeoutStopSec"), DrainSeconds))
	}
	if u.Last("Service", "LimitNOFILE") == "" {
		errs = append(errs, fmt.Errorf("[Service] no LimitNOFILE"))
	}
	want("Service", "NoNewPrivileges", "yes")
	want("Service", "ProtectSystem", "strict")
	want("Service", "ProtectHome", "yes")
	want("Service", "PrivateTmp", "yes")
	// Read-only cgroups, not a cgroup namespace that would hide rbee.slice.
	want("Service", "ProtectControlGroups", "yes")
	want("Service", "DevicePolicy", "closed")
	for _, forbidden := range []struct{ key, why string }{
		{"PrivateDevices", "it hides /dev/nvidia*, and NVML with it"},
		{"Delegate", "the node creates no cgroup, and a delegated unit would own (and kill on restart) the workers started in it"},
		{"Slice", "the node stays out of rbee.slice, which rbee manages itself"},
		{"ProtectProc", "it hides the worker processes the hive measures"},
		{"ProcSubset", "it hides /proc/net, where the hive finds --worker servers' pids"},
		{"User", "the node reads the /proc entries of workers that run as root"},
		{"DynamicUser", "the node reads the /proc entries of workers that run as root"},
	} {
		if v := u.Last("Service", forbidden.key); v != "" && v != "no" {
			errs = append(errs, fmt.Errorf("[Service] %s=%s: %s", forbidden.key, v, forbidden.why))
		}
	}
	if !slices.ContainsFunc(u.All("Service", "DeviceAllow"), func(s string) bool { return strings.HasPrefix(s, "char-nvidia") }) {
		errs = append(errs, fmt.Errorf("[Service] no DeviceAllow=char-nvidia...: NVML needs /dev/nvidiactl and /dev/nvidiaN"))
	}
	families := u.All("Service", "RestrictAddressFamilies")
	for _, f := range []string{"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"} {
		if !slices.Contains(families, f) {
			errs = append(errs, fmt.Errorf("[Service] RestrictAddressFamilies lacks %s", f))
		}
	}
	caps := u.All("Service", "CapabilityBoundingSet")
	if !slices.Equal(slices.Sorted(slices.Values(caps)), []string{"CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}) {
		errs = append(errs, fmt.Errorf("[Service] CapabilityBoundingSet=%v, want only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH", caps))
	}
	want("Install", "WantedBy", "multi-user.target")
	return errs
}

// CheckWorkerUnit checks rbee-worker@.service: `rbee worker run` as root
// with the cgroup tree writable, so it can create rbee.slice/<group>/<instance>.
func CheckWorkerUnit(u Unit) []error {
	var errs []error
	if got := u.Last("Service", "ExecStart"); !strings.HasPrefix(got, BinPath+" worker run ") || !strings.Contains(got, "--instance %i") || !strings.Contains(got, " -- ") {
		errs = append(errs, fmt.Errorf("[Service] ExecStart=%q, want %s worker run ... --instance %%i ... -- COMMAND", got, BinPath))
	}
	for _, k := range []string{"User", "DynamicUser", "ProtectControlGroups", "ProtectKernelTunables", "ProtectSystem", "PrivateDevices", "Delegate"} {
		if v := u.Last("Service", k); v != "" && v != "no" {
			errs = append(errs, fmt.Errorf("[Service] %s=%s: creating groups at the top of the cgroup tree needs root and a writable /sys/fs/cgroup", k, v))
		}
	}
	if u.Last("Service", "KillSignal") != "SIGTERM" {
		errs = append(errs, fmt.Errorf("[Service] KillSignal=%q, want SIGTERM (passed on to the worker)", u.Last("Service", "KillSignal")))
	}
	if !slices.Contains(u.All("Unit", "After"), "rbee.service") || slices.Contains(u.All("Unit", "BindsTo"), "rbee.service") {
		errs = append(errs, fmt.Errorf("[Unit] want After=rbee.service (the registration finds the node) and no BindsTo= (a node restart must not stop workers)"))
	}
	return errs
}

// CheckEnvFile checks rbee.env: every variable it sets or documents is one
// rbee reads, every variable of `rbee node run` (nodeVars) is there, set or
// documented, so the file is the whole list of settings, and it names the
// key file.
func CheckEnvFile(e EnvFile, rbeeVars, nodeVars map[string]bool) []error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(nodeVars)) {
		if _, set := e.Set[k]; !set && !slices.Contains(e.Documented, k) {
			errs = append(errs, fmt.Errorf("neither sets nor documents %s, which `rbee node run` reads", k))
		}
	}
	for k := range e.Set {
		if !rbeeVars[k] {
			errs = append(errs, fmt.Errorf("sets %s, which rbee does not read", k))
		}
	}
	for _, k := range e.Documented {
		if !rbeeVars[k] {
			errs = append(errs, fmt.Errorf("documents %s, which rbee does not read", k))
		}
	}
	if e.Set["RBEE_CLUSTER_KEY_FILE"] != KeyFilePath {
		errs = append(errs, fmt.Errorf("RBEE_CLUSTER_KEY_FILE=%q, want %s", e.Set["RBEE_CLUSTER_KEY_FILE"], KeyFilePath))
	}
	return errs
}

// Where rbee-hive.service keeps what the engines write, and how long a
// hive's engines get to stop (models.DefaultStopGrace).
const (
	CacheDir          = "/var/cache/rbee"
	EngineStopSeconds = 10
	// HiveCgroupRoot is the delegated cgroup of rbee-hive.service: %n is
	// the unit's name, under its Slice=.
	HiveCgroupRoot = "/sys/fs/cgroup/system.slice/%n"
)

// CheckHiveUnit checks rbee-hive.service, the unit of a hive that starts
// engines: the engines it starts inherit its settings, so none of those that
// break them (W^X memory, a syscall filter, a read-only cgroup tree, hidden
// devices), a writable models folder (the one rbee.env documents) and cache,
// its cgroup delegated and handed to rbee as --cgroup-root with the node
// moved out of it first, and a stop that lets the node stop its engines.
func CheckHiveUnit(u Unit, env EnvFile) []error {
	var errs []error
	want := func(section, key, value string) {
		if got := u.Last(section, key); got != value {
			errs = append(errs, fmt.Errorf("[%s] %s=%q, want %q", section, key, got, value))
		}
	}
	exec := u.Last("Service", "ExecStart")
	move := "echo 0 > " + HiveCgroupRoot + "/supervisor/cgroup.procs"
	run := "exec " + BinPath + " node run "
	switch {
	case !strings.Contains(exec, run) || !strings.Contains(exec, "--data-dir "+DataDir) || !strings.Contains(exec, "--cgroup-root "+HiveCgroupRoot):
		errs = append(errs, fmt.Errorf("[Service] ExecStart=%q, want %s... --data-dir %s --cgroup-root %s (the unit's delegated cgroup)", exec, run, DataDir, HiveCgroupRoot))
	case !strings.Contains(exec, move) || strings.Index(exec, move) > strings.Index(exec, run):
		errs = append(errs, fmt.Errorf("[Service] ExecStart=%q must move the node out of the unit's cgroup (%s) before it runs: a cgroup holding processes cannot give its children the memory and io controllers", exec, move))
	}
	want("Service", "Delegate", "yes")
	want("Service", "Slice", "system.slice") // HiveCgroupRoot's parent
	want("Service", "KillMode", "mixed")
	want("Service", "KillSignal", "SIGTERM")
	want("Service", "Restart", "on-failure")
	want("Service", "EnvironmentFile", EnvFilePath)
	want("Service", "StateDirectory", "rbee")
	want("Service", "CacheDirectory", "rbee")
	want("Service", "LimitMEMLOCK", "infinity")
	want("Service", "NoNewPrivileges", "yes")
	want("Service", "ProtectSystem", "strict")
	want("Service", "DevicePolicy", "closed")
	if d, err := time.ParseDuration(u.Last("Service", "TimeoutStopSec")); err != nil || d <= (DrainSeconds+EngineStopSeconds)*time.Second {
		errs = append(errs, fmt.Errorf("[Service] TimeoutStopSec=%q must be a duration above rbee's %d s drain plus %d s for its engines to stop", u.Last("Service", "TimeoutStopSec"), DrainSeconds, EngineStopSeconds))
	}
	if !slices.Contains(u.All("Service", "Environment"), "HOME="+CacheDir) {
		errs = append(errs, fmt.Errorf("[Service] no Environment=HOME=%s: engines write their caches under HOME, and /root is not writable", CacheDir))
	}
	if v := u.Last("Service", "ProtectHome"); v == "yes" || v == "tmpfs" {
		errs = append(errs, fmt.Errorf("[Service] ProtectHome=%s hides models kept under /home; read-only keeps them readable", v))
	}
	for _, forbidden := range []struct{ key, why string }{
		{"MemoryDenyWriteExecute", "CUDA's JIT, Python and Triton need memory both writable and executable"},
		{"SystemCallFilter", "engines are third-party programs whose syscalls nobody listed"},
		{"ProtectControlGroups", "it makes the delegated cgroup read-only, so the engines' groups cannot be made"},
		{"PrivateDevices", "it hides /dev/nvidia*"},
		{"ProtectProc", "it hides the engine processes the hive measures"},
		{"ProcSubset", "it hides /proc/net"},
		{"User", "the node reads the /proc entries of workers that run as root"},
		{"DynamicUser", "the node reads the /proc entries of workers that run as root"},
	} {
		if v := u.Last("Service", forbidden.key); v != "" && v != "no" {
			errs = append(errs, fmt.Errorf("[Service] %s=%s: %s", forbidden.key, v, forbidden.why))
		}
	}
	if !slices.ContainsFunc(u.All("Service", "DeviceAllow"), func(s string) bool { return strings.HasPrefix(s, "char-nvidia") }) {
		errs = append(errs, fmt.Errorf("[Service] no DeviceAllow=char-nvidia...: CUDA needs /dev/nvidia-uvm and /dev/nvidiaN"))
	}
	// The models folder rbee.env suggests must be one the unit can write.
	if dir := env.Examples["RBEE_MODELS_DIR"]; dir == "" {
		errs = append(errs, fmt.Errorf("rbee.env documents no RBEE_MODELS_DIR for this unit"))
	} else if !slices.ContainsFunc(u.All("Service", "ReadWritePaths"), func(p string) bool { return strings.TrimPrefix(p, "-") == dir }) {
		errs = append(errs, fmt.Errorf("[Service] ReadWritePaths=%v lacks %s, the RBEE_MODELS_DIR rbee.env documents: `rbee model pull` writes there", u.All("Service", "ReadWritePaths"), dir))
	}
	if !slices.Contains(u.All("Unit", "Conflicts"), "rbee.service") {
		errs = append(errs, fmt.Errorf("[Unit] no Conflicts=rbee.service: both bind the same ports"))
	}
	want("Install", "WantedBy", "multi-user.target")
	return errs
}
