package check

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Instruction is one Dockerfile instruction, continuations joined.
type Instruction struct {
	Line int    // where it starts
	Cmd  string // upper case: FROM, RUN, COPY...
	Args string
}

// Stage is one FROM and the instructions under it.
type Stage struct {
	From, Name string
	Instr      []Instruction
}

// ParseDockerfile splits a Dockerfile into stages. It knows what these checks
// need: comments (also between continued lines), backslash continuations and
// `FROM image AS name`; heredocs and escape directives are not used here.
func ParseDockerfile(b []byte) ([]Stage, error) {
	var stages []Stage
	var cur *Instruction
	finish := func() error {
		if cur == nil {
			return nil
		}
		in := *cur
		cur = nil
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			s := Stage{From: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.Name = f[2]
			} else if len(f) != 1 {
				return fmt.Errorf("line %d: FROM %s: want IMAGE [AS NAME]", in.Line, in.Args)
			}
			stages = append(stages, s)
			return nil
		}
		if len(stages) == 0 {
			return fmt.Errorf("line %d: %s before any FROM", in.Line, in.Cmd)
		}
		st := &stages[len(stages)-1]
		st.Instr = append(st.Instr, in)
		return nil
	}
	for i, raw := range strings.Split(string(b), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cont := strings.HasSuffix(line, `\`)
		line = strings.TrimSpace(strings.TrimSuffix(line, `\`))
		if cur == nil {
			cmd, args, _ := strings.Cut(line, " ")
			cur = &Instruction{Line: i + 1, Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)}
		} else {
			cur.Args += " " + line
		}
		if !cont {
			if err := finish(); err != nil {
				return nil, err
			}
		}
	}
	if err := finish(); err != nil {
		return nil, err
	}
	return stages, nil
}

// All lists a stage's instructions of one kind.
func (s Stage) All(cmd string) []Instruction {
	var out []Instruction
	for _, in := range s.Instr {
		if in.Cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// Last is a stage's last instruction of a kind (the one in effect).
func (s Stage) Last(cmd string) (Instruction, bool) {
	all := s.All(cmd)
	if len(all) == 0 {
		return Instruction{}, false
	}
	return all[len(all)-1], true
}

// BuildScript is the script both the image's build stage and CI run.
const BuildScript = "deploy/docker/build-binary.sh"

var (
	golangImage  = regexp.MustCompile(`^golang:(\d+\.\d+)(?:\.\d+)?-([a-z]+)$`)
	runtimeImage = regexp.MustCompile(`^(?:debian:([a-z]+)-slim|gcr\.io/distroless/base(?:-nossl)?-debian(\d+)(?::.*)?)$`)
	// debianVersions maps Debian's release numbers to their code names, for a
	// distroless base named by number.
	debianVersions = map[string]string{"12": "bookworm", "13": "trixie"}
)

// CheckDockerfile checks the image's Dockerfile for what CI cannot build:
// a golang build stage named build, on the Go of go.mod, that builds with
// BuildScript (and no other go build), and a runtime stage on the same
// Debian release (glibc for cgo) that runs rbee as a non-root user, with the
// ports, entry point and NVIDIA variables the deployment expects. It returns
// the runtime user's uid.
func CheckDockerfile(stages []Stage, goVersion string) (uid int64, errs []error) {
	if len(stages) != 2 {
		return 0, []error{fmt.Errorf("want 2 stages (build, runtime), have %d", len(stages))}
	}
	build, run := stages[0], stages[1]
	m := golangImage.FindStringSubmatch(build.From)
	switch {
	case m == nil || build.Name != "build":
		errs = append(errs, fmt.Errorf("build stage: FROM %s AS %s, want golang:X.Y-DEBIAN AS build", build.From, build.Name))
	case m[1] != goVersion:
		errs = append(errs, fmt.Errorf("build stage: Go %s, but go.mod says go %s", m[1], goVersion))
	}
	runs := build.All("RUN")
	if !slices.ContainsFunc(runs, func(in Instruction) bool { return strings.Contains(in.Args, "bash "+BuildScript+" /out/rbee") }) {
		errs = append(errs, fmt.Errorf("build stage: no RUN bash %s /out/rbee: the image must build what CI checks", BuildScript))
	}
	for _, st := range stages {
		for _, in := range st.All("RUN") {
			if strings.Contains(in.Args, "go build") {
				errs = append(errs, fmt.Errorf("line %d: go build outside %s: the image and CI would build differently", in.Line, BuildScript))
			}
		}
	}

	rm := runtimeImage.FindStringSubmatch(run.From)
	if rm == nil {
		errs = append(errs, fmt.Errorf("runtime stage: FROM %s, want debian:DEBIAN-slim or distroless base-debianN (glibc)", run.From))
	} else if codename := rm[1] + debianVersions[rm[2]]; m != nil && codename != m[2] {
		errs = append(errs, fmt.Errorf("runtime stage is Debian %s, build stage %s: a cgo binary needs the glibc it was linked against", codename, m[2]))
	}
	if !slices.ContainsFunc(run.All("COPY"), func(in Instruction) bool {
		return strings.HasPrefix(in.Args, "--from=build /out/rbee ")
	}) {
		errs = append(errs, fmt.Errorf("runtime stage: no COPY --from=build /out/rbee"))
	}
	if u, ok := run.Last("USER"); !ok {
		errs = append(errs, fmt.Errorf("runtime stage: no USER: it would run as root"))
	} else {
		id, _, _ := strings.Cut(u.Args, ":")
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil || n == 0 {
			errs = append(errs, fmt.Errorf("line %d: USER %s: want a numeric non-root uid (Kubernetes' runAsNonRoot checks numbers)", u.Line, u.Args))
		}
		uid = n
	}
	var expose []string
	for _, in := range run.All("EXPOSE") {
		expose = append(expose, strings.Fields(in.Args)...)
	}
	for _, p := range []string{fmt.Sprintf("%d/tcp", HTTPPort), fmt.Sprintf("%d/tcp", GossipPort), fmt.Sprintf("%d/udp", GossipPort)} {
		if !slices.Contains(expose, p) {
			errs = append(errs, fmt.Errorf("runtime stage: EXPOSE lacks %s", p))
		}
	}
	for cmd, want := range map[string][]string{"ENTRYPOINT": {"rbee"}, "CMD": {"node", "run"}} {
		in, _ := run.Last(cmd)
		var got []string
		if err := json.Unmarshal([]byte(in.Args), &got); err != nil || !slices.Equal(got, want) {
			errs = append(errs, fmt.Errorf("runtime stage: %s %s, want the exec form %q", cmd, in.Args, want))
		}
	}
	env := map[string]string{}
	for _, in := range run.All("ENV") {
		for _, kv := range strings.Fields(in.Args) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	if env["NVIDIA_VISIBLE_DEVICES"] == "" {
		errs = append(errs, fmt.Errorf("runtime stage: no ENV NVIDIA_VISIBLE_DEVICES for the NVIDIA container runtime"))
	}
	if caps := strings.Split(env["NVIDIA_DRIVER_CAPABILITIES"], ","); !slices.Contains(caps, "utility") || !slices.Contains(caps, "compute") {
		errs = append(errs, fmt.Errorf("runtime stage: NVIDIA_DRIVER_CAPABILITIES=%q, want utility (NVML) and compute", env["NVIDIA_DRIVER_CAPABILITIES"]))
	}
	return uid, errs
}

// CheckBuildScript checks that the build script builds rbee as the image
// promises: cgo on (NVML), paths trimmed, symbols stripped, ./cmd/rbee.
func CheckBuildScript(script string) []error {
	const want = `CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o "$out" ./cmd/rbee`
	if !strings.Contains(script, "\n"+want+"\n") {
		return []error{fmt.Errorf("%s does not run %s", BuildScript, want)}
	}
	return nil
}
