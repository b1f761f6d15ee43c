package models

import (
	"errors"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Placeholders an engine template may use. See Vars for their values.
var Placeholders = []string{"path", "port", "slots", "ctx", "ctx_total", "name", "host", "mem_fraction", "gpus", "tp", "tensor_split"}

// splitPlaceholders are those that tell an engine several GPUs to split a
// model across: a template using one may be placed on several GPUs.
var splitPlaceholders = []string{"gpus", "tp", "tensor_split"}

// Names of the built-in engines and the defaults ParseModelFlag picks from.
const (
	EngineLlamaServer = "llama-server"
	EngineVLLM        = "vllm"
	EngineSGLang      = "sglang"
	EngineSim         = "sim"
	EngineOllama      = "ollama"
)

// Engine is a command template that serves one model on one port.
type Engine struct {
	Name    string
	Words   []string // the template split into words; a word may hold placeholders like "{port}" or "--port={port}"
	Builtin bool
	Sim     bool   // the built-in "sim" engine: Words[0] is "rbee" and is replaced by the rbee binary at start
	Binary  string // Words[0] resolved with exec.LookPath (absolute), "" when not found
	Missing string // why the engine cannot run ("llama-server: executable file not found in $PATH"), "" when it can
}

// MultiGPU reports whether e can split one model across several GPUs: its
// template says which ({gpus}, {tp} or {tensor_split}), or it is the
// simulator, which counts the VRAM of every GPU it is given.
func (e *Engine) MultiGPU() bool {
	if e.Sim {
		return true
	}
	for _, w := range e.Words[min(1, len(e.Words)):] {
		names, _ := placeholdersIn(w)
		for _, n := range names {
			if slices.Contains(splitPlaceholders, n) {
				return true
			}
		}
	}
	return false
}

// BuiltinEngines returns fresh copies of the built-in engines, so that a
// caller's --engine overrides never leak into another hive in the same process
// (tests run many).
//
// The hive appends --load-ms and --model-vram-mb/--vram-mb to the sim engine's
// argv itself: they come from the Entry and the machine, not the template.
func BuiltinEngines() map[string]*Engine {
	return map[string]*Engine{
		EngineLlamaServer: {
			Name: EngineLlamaServer, Builtin: true,
			// -ngl 999: offload every layer; llama-server caps it at the
			// model's layer count, and a hive exists to serve from the GPU.
			// -c is the context of all slots together, so ctx x slots
			// gives each slot ctx tokens. --tensor-split shares the
			// layers among the GPUs in CUDA_VISIBLE_DEVICES.
			Words: strings.Fields("llama-server -m {path} --alias {name} --host {host} --port {port} -np {slots} -c {ctx_total} -ngl 999 --tensor-split {tensor_split}"),
		},
		EngineVLLM: {
			Name: EngineVLLM, Builtin: true,
			// vLLM takes 90% of the GPU unless told otherwise and refuses
			// to start when that much is not free: give it its placement's
			// share, so that models share a GPU the way rbee places them.
			Words: strings.Fields("vllm serve {path} --host {host} --port {port} --served-model-name {name} --max-num-seqs {slots}" +
				" --max-model-len {ctx} --gpu-memory-utilization {mem_fraction} --tensor-parallel-size {tp}"),
		},
		EngineSGLang: {
			Name: EngineSGLang, Builtin: true,
			Words: strings.Fields("python3 -m sglang.launch_server --model-path {path} --host {host} --port {port} --served-model-name {name}" +
				" --mem-fraction-static {mem_fraction} --max-running-requests {slots} --context-length {ctx} --tp {tp}"),
		},
		EngineOllama: {
			Name: EngineOllama, Builtin: true,
			// Told what to serve by its environment and HTTP API, not
			// flags: see ollama.go.
			Words: strings.Fields("ollama serve"),
		},
		EngineSim: {
			Name: EngineSim, Builtin: true, Sim: true,
			Words: strings.Fields("rbee worker simulate --model {name} --host {host} --port {port} --slots {slots}"),
		},
	}
}

// ParseEngineFlag parses one --engine value into engines:
//
//   - NAME=BINARY points a built-in at another binary (replaces Words[0]);
//     NAME must already be in engines.
//   - NAME=TEMPLATE, told apart by whitespace or '{' in the value, defines a
//     new engine or replaces the template of an existing one. The template is
//     split with SplitWords, and every {placeholder} must be one of
//     Placeholders. Its first word, the program, must be literal.
//
// Placeholders are recognised after quote removal, so '--port={port}' in
// single quotes is still expanded: quoting protects spaces, not braces.
func ParseEngineFlag(s string, engines map[string]*Engine) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("engine %q: want NAME=BINARY or NAME=TEMPLATE", s)
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("engine %q: %w", name, err)
	}
	if strings.TrimSpace(value) == "" {
		return fmt.Errorf("engine %q: empty binary or template", name)
	}
	old := engines[name]

	if !strings.ContainsAny(value, " \t\n\r{") {
		if old == nil {
			return fmt.Errorf("engine %q: not a built-in engine (known: %s); to define a new one give a template with {placeholders}",
				name, strings.Join(engineNames(engines), ", "))
		}
		words := slices.Clone(old.Words)
		words[0] = value
		// Keep Sim: the binary still speaks the simulator's flags, and
		// ResolveEngines looks it up like any other now that it is not "rbee".
		engines[name] = &Engine{Name: name, Words: words, Builtin: old.Builtin, Sim: old.Sim}
		return nil
	}

	words, err := SplitWords(value)
	if err != nil {
		return fmt.Errorf("engine %q: %w", name, err)
	}
	if len(words) == 0 {
		return fmt.Errorf("engine %q: empty template", name)
	}
	for i, w := range words {
		names, err := placeholdersIn(w)
		if err != nil {
			return fmt.Errorf("engine %q: %w in %q", name, err, value)
		}
		for _, p := range names {
			if !slices.Contains(Placeholders, p) {
				return fmt.Errorf("engine %q: unknown placeholder {%s} in %q (known: %s)", name, p, value, knownPlaceholders())
			}
		}
		if i == 0 && len(names) > 0 {
			// The program decides what runs; it must not depend on a
			// model's name or path.
			return fmt.Errorf("engine %q: program %q may not hold a placeholder in %q", name, w, value)
		}
	}
	if !slices.ContainsFunc(words[1:], func(w string) bool {
		names, _ := placeholdersIn(w)
		return slices.Contains(names, "port")
	}) && !(old != nil && old.Builtin && name == EngineOllama) {
		// The hive finds the engine on the port it gave it; Ollama alone
		// is told its port by its environment.
		return fmt.Errorf("engine %q: template %q has no {port}: the hive could not reach the server it starts", name, value)
	}
	e := &Engine{Name: name, Words: words}
	if old != nil {
		e.Builtin, e.Sim = old.Builtin, old.Sim
	}
	engines[name] = e
	return nil
}

// ResolveEngines fills Binary and Missing of every engine. A Sim engine still
// named "rbee" runs rbeeBinary (this very program, usually os.Executable), so
// that the simulator works with no PATH set up; any other program is found
// with exec.LookPath and made absolute, so a later chdir cannot change it.
func ResolveEngines(engines map[string]*Engine, rbeeBinary string) {
	for _, e := range engines {
		e.Binary, e.Missing = "", ""
		if len(e.Words) == 0 {
			e.Missing = "empty template"
			continue
		}
		prog := e.Words[0]
		if e.Sim && prog == "rbee" {
			if rbeeBinary == "" {
				e.Missing = "rbee: own binary unknown"
				continue
			}
			e.Binary = rbeeBinary
			continue
		}
		path, err := exec.LookPath(prog)
		if err == nil {
			path, err = filepath.Abs(path)
		}
		if err != nil {
			// exec.Error already quotes the name; say it once, plainly.
			var ee *exec.Error
			if errors.As(err, &ee) {
				err = ee.Err
			}
			e.Missing = fmt.Sprintf("%s: %v", prog, err)
			continue
		}
		e.Binary = path
	}
}

// Argv expands the template for one start: Words[0] becomes Binary and every
// {placeholder} in the other words becomes vars[placeholder]. Values are
// inserted verbatim and never re-expanded, so a model name holding braces or
// spaces stays one literal word.
func (e *Engine) Argv(vars map[string]string) ([]string, error) {
	if e.Missing != "" {
		return nil, fmt.Errorf("engine %q cannot run: %s", e.Name, e.Missing)
	}
	if e.Binary == "" || len(e.Words) == 0 {
		return nil, fmt.Errorf("engine %q: binary not resolved", e.Name)
	}
	argv := make([]string, 0, len(e.Words))
	argv = append(argv, e.Binary)
	for _, w := range e.Words[1:] {
		out, err := expand(w, vars)
		if err != nil {
			return nil, fmt.Errorf("engine %q: %w", e.Name, err)
		}
		argv = append(argv, out)
	}
	return argv, nil
}

// placeholdersIn lists the {names} in w, refusing unbalanced braces.
func placeholdersIn(w string) ([]string, error) {
	var names []string
	_, err := scanBraces(w, func(name string) (string, error) {
		names = append(names, name)
		return "", nil
	})
	return names, err
}

// expand replaces every {name} in w with vars[name].
func expand(w string, vars map[string]string) (string, error) {
	return scanBraces(w, func(name string) (string, error) {
		v, ok := vars[name]
		if !ok {
			return "", fmt.Errorf("no value for placeholder {%s} in %q", name, w)
		}
		return v, nil
	})
}

// scanBraces walks w once, replacing each {name} by what fn returns. A '{'
// inside braces, or a '}' outside them, is unbalanced: templates have no
// escape for literal braces, and no engine flag we know of needs one.
func scanBraces(w string, fn func(name string) (string, error)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		switch w[i] {
		case '}':
			return "", fmt.Errorf("unbalanced braces: stray '}' in %q", w)
		case '{':
			end := strings.IndexAny(w[i+1:], "{}")
			if end < 0 || w[i+1+end] != '}' {
				return "", fmt.Errorf("unbalanced braces: unclosed '{' in %q", w)
			}
			v, err := fn(w[i+1 : i+1+end])
			if err != nil {
				return "", err
			}
			b.WriteString(v)
			i += end + 1
		default:
			b.WriteByte(w[i])
		}
	}
	return b.String(), nil
}

func knownPlaceholders() string {
	q := make([]string, len(Placeholders))
	for i, p := range Placeholders {
		q[i] = "{" + p + "}"
	}
	return strings.Join(q, " ")
}

func engineNames(engines map[string]*Engine) []string {
	names := make([]string, 0, len(engines))
	for n := range engines {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Placement is where a start puts a model: the GPUs (in CUDA order, each
// taking an even share), the VRAM it may take in all, and each GPU's total
// VRAM (0 where unknown).
type Placement struct {
	GPUs    []int
	VRAMMB  uint64
	TotalMB []uint64 // by GPUs' order
}

// defaultMemFraction is {mem_fraction} when the GPU's size is unknown (a
// hive without GPU telemetry): vLLM's and SGLang's own default.
const defaultMemFraction = 0.9

// Vars are the values of the placeholders for one start of e on port:
//
//   - {ctx} is the context of one request (one slot), {ctx_total} that of
//     all slots together (ctx x slots, llama-server's -c);
//   - {mem_fraction} is the share of each GPU the engine may take: its
//     placement's VRAM on that GPU over the GPU's total, rounded up to a
//     hundredth (the smallest GPU's, when they differ, so that each gets
//     at least its share); 0.9 when no GPU size is known;
//   - {gpus} is the GPU indexes, comma-separated ("" with none), {tp} their
//     count (at least 1) and {tensor_split} their proportions ("1,1").
func Vars(e Entry, port string, p Placement) map[string]string {
	n := max(len(p.GPUs), 1)
	frac := defaultMemFraction
	var smallest uint64
	for _, t := range p.TotalMB {
		if t > 0 && (smallest == 0 || t < smallest) {
			smallest = t
		}
	}
	if smallest > 0 && p.VRAMMB > 0 {
		share := (p.VRAMMB + uint64(n) - 1) / uint64(n)
		frac = min(max(math.Ceil(float64(share)*100/float64(smallest))/100, 0.01), 0.99)
	}
	gpus := make([]string, len(p.GPUs))
	for i, g := range p.GPUs {
		gpus[i] = strconv.Itoa(g)
	}
	return map[string]string{"path": e.Path, "port": port, "slots": strconv.Itoa(e.Slots), "ctx": strconv.Itoa(e.Ctx),
		"ctx_total": strconv.Itoa(e.Ctx * max(e.Slots, 1)), "name": e.Name, "host": "127.0.0.1",
		"mem_fraction": strconv.FormatFloat(frac, 'f', 2, 64), "gpus": strings.Join(gpus, ","),
		"tp": strconv.Itoa(n), "tensor_split": strings.TrimSuffix(strings.Repeat("1,", n), ",")}
}
