package models

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Placeholders an engine template may use.
var Placeholders = []string{"path", "port", "slots", "ctx", "name", "host"}

// Names of the built-in engines and the defaults ParseModelFlag picks from.
const (
	EngineLlamaServer = "llama-server"
	EngineVLLM        = "vllm"
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
			Words: strings.Fields("llama-server -m {path} --host {host} --port {port} -np {slots} -c {ctx} -ngl 999"),
		},
		EngineVLLM: {
			Name: EngineVLLM, Builtin: true,
			Words: strings.Fields("vllm serve {path} --host {host} --port {port} --served-model-name {name} --max-num-seqs {slots}"),
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
