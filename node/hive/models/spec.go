// Package models is a hive's model lifecycle: what it can serve (its catalog of
// model files and engine templates), starting engines on demand, readiness,
// idle unload and eviction.
//
// This file and words.go are the pure parsing layer: --engine and --model flag
// values, the models directory scan, size and VRAM estimates. They start no
// process and never run a shell; the only I/O is stat/readdir of model paths
// and exec.LookPath of engine binaries.
package models

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Placeholders an engine template may use.
var Placeholders = []string{"path", "port", "slots", "ctx", "name", "host"}

// Defaults for an Entry that does not say otherwise.
const (
	// DefaultSlots matches llama-server's own default parallel count: enough
	// to batch a few concurrent requests without one slow client queueing
	// everyone behind it.
	DefaultSlots = 4
	// DefaultCtx is a context most chat requests fit in, and small enough
	// that DefaultSlots of it stay cheap in KV cache on any GPU.
	DefaultCtx = 4096
	// KVBytesPerToken is the fp16 KV cache of one token of a 7-8B model with
	// GQA (Llama 3 8B, Qwen 7B): 32 layers x 8 KV heads x 128 dims x 2 (K, V)
	// x 2 bytes = 128 KiB. Used only when nothing better is known.
	KVBytesPerToken = 32 * 8 * 128 * 2 * 2
)

// Names of the built-in engines and the defaults ParseModelFlag picks from.
const (
	EngineLlamaServer = "llama-server"
	EngineVLLM        = "vllm"
	EngineSim         = "sim"
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

// Entry is one model a hive can serve.
type Entry struct {
	Name        string
	Path        string
	Engine      string   // "llama-server" for a file, "vllm" for a directory unless engine= says otherwise
	Slots       int      // concurrent sequences per replica; DefaultSlots when not given
	Ctx         int      // context length in tokens; DefaultCtx when not given
	VRAMMB      uint64   // vram=MiB, 0 when not given
	LoadMS      int      // load_ms=, for the sim engine
	MaxReplicas int      // max_replicas=, 0 = no cap
	Args        []string // args=..., split with SplitWords, appended to the engine's argv
}

// ParseModelFlag parses one --model value:
//
//	NAME=PATH[,engine=E][,slots=N][,ctx=N][,vram=MiB][,load_ms=N][,max_replicas=N][,args=...]
//
// args= must come last and takes the rest of the string verbatim, commas
// included, since engine flags often hold them. Without engine= the engine
// follows what PATH is: a directory is a Hugging Face folder for vllm,
// anything else (a missing path too) a GGUF file for llama-server. For
// engine=sim PATH may be anything, even empty: the simulator loads nothing.
func ParseModelFlag(s string) (Entry, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return Entry{}, fmt.Errorf("model %q: want NAME=PATH[,key=value...]", s)
	}
	if err := checkName(name); err != nil {
		return Entry{}, fmt.Errorf("model %q: %w", name, err)
	}
	e := Entry{Name: name, Slots: DefaultSlots, Ctx: DefaultCtx}
	path, opts, more := strings.Cut(rest, ",")
	e.Path = path

	seen := map[string]bool{}
	// more, not opts != "", so that a trailing comma is an empty option.
	for more {
		var opt string
		if strings.HasPrefix(opts, "args=") {
			opt, more = opts, false
		} else {
			opt, opts, more = strings.Cut(opts, ",")
		}
		key, val, ok := strings.Cut(opt, "=")
		if !ok || key == "" {
			return Entry{}, fmt.Errorf("model %q: option %q: want key=value", name, opt)
		}
		if seen[key] {
			return Entry{}, fmt.Errorf("model %q: duplicate option %q", name, key)
		}
		seen[key] = true
		if err := e.setOption(key, val); err != nil {
			return Entry{}, fmt.Errorf("model %q: option %s: %w", name, key, err)
		}
	}

	switch {
	case e.Engine == EngineSim:
	case e.Path == "":
		return Entry{}, fmt.Errorf("model %q: empty path", name)
	case e.Engine == "":
		e.Engine = EngineLlamaServer
		if fi, err := os.Stat(e.Path); err == nil && fi.IsDir() {
			e.Engine = EngineVLLM
		}
	}
	return e, nil
}

func (e *Entry) setOption(key, val string) error {
	var err error
	switch key {
	case "engine":
		if val == "" {
			return errors.New("empty engine name")
		}
		e.Engine = val
	case "slots":
		e.Slots, err = parseInt(val, 1)
	case "ctx":
		e.Ctx, err = parseInt(val, 1)
	case "vram":
		var n uint64
		n, err = strconv.ParseUint(val, 10, 64)
		if err == nil && n == 0 {
			err = errors.New("must be at least 1 MiB; leave it out to estimate")
		}
		e.VRAMMB = n
	case "load_ms":
		e.LoadMS, err = parseInt(val, 0)
	case "max_replicas":
		e.MaxReplicas, err = parseInt(val, 0)
	case "args":
		e.Args, err = SplitWords(val)
	default:
		return errors.New("unknown option (known: engine, slots, ctx, vram, load_ms, max_replicas, args)")
	}
	return err
}

func parseInt(s string, minimum int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("bad number %q", s)
	}
	if n < minimum {
		return 0, fmt.Errorf("%d is below the minimum %d", n, minimum)
	}
	return n, nil
}

// checkName allows what is safe in a URL path, a log line and a flag value
// alike, and what model names use in practice ("llama3.1:8b",
// "Qwen/Qwen2.5-7B", "model@q4").
func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	for _, r := range name {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		case strings.ContainsRune("-_.:@/", r):
		default:
			return fmt.Errorf("name may hold only letters, digits and - _ . : @ /, not %q", r)
		}
	}
	return nil
}

// ScanModelsDir lists the models in dir, sorted by name: every regular file
// *.gguf (named for its basename without .gguf, served by llama-server) and
// every direct subfolder holding config.json and at least one *.safetensors
// file (named for the folder, served by vllm). Symbolic links are followed,
// since the Hugging Face cache and hand-made model folders are full of them;
// anything else, and anything deeper than one level, is ignored. Only a
// missing or unreadable dir is an error; an unreadable subfolder is skipped.
func ScanModelsDir(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("scan models dir: %w", err)
	}
	var out []Entry
	for _, de := range des {
		path := filepath.Join(dir, de.Name())
		fi, err := os.Stat(path) // follows links; a dangling one is skipped
		if err != nil {
			continue
		}
		switch {
		case fi.Mode().IsRegular() && strings.HasSuffix(de.Name(), ".gguf"):
			name := strings.TrimSuffix(de.Name(), ".gguf")
			if name == "" {
				continue
			}
			out = append(out, Entry{Name: name, Path: path, Engine: EngineLlamaServer, Slots: DefaultSlots, Ctx: DefaultCtx})
		case fi.IsDir() && isHFFolder(path):
			out = append(out, Entry{Name: de.Name(), Path: path, Engine: EngineVLLM, Slots: DefaultSlots, Ctx: DefaultCtx})
		}
	}
	// Stable so that a file and a folder of the same name keep ReadDir's order.
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// isHFFolder says whether dir looks like a Hugging Face model folder.
func isHFFolder(dir string) bool {
	if fi, err := os.Stat(filepath.Join(dir, "config.json")); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), ".safetensors") {
			continue
		}
		if fi, err := os.Stat(filepath.Join(dir, de.Name())); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}

// SizeOnDisk is a file's size, or the sum of a folder's regular files,
// recursively. Links to regular files count at their target's size (a Hugging
// Face snapshot is all links to blobs); links to folders are not followed, so
// a loop cannot hang the walk.
func SizeOnDisk(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("size on disk: %w", err)
	}
	if !fi.IsDir() {
		return fi.Size(), nil
	}
	var total int64
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		case d.Type()&fs.ModeSymlink != 0:
			if info, err := os.Stat(p); err == nil && info.Mode().IsRegular() {
				total += info.Size()
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("size on disk: %w", err)
	}
	return total, nil
}

// EstimateVRAMMB is what a model needs when nothing better is known, in MiB
// rounded up: its size on disk x 1.2 (weights plus runtime buffers: compute
// graph, CUDA context, activations) plus a KV cache of ctx*slots tokens at
// KVBytesPerToken. It errs high: a refused load is cheaper than an engine
// that dies out of memory after the hive promised it a GPU.
//
// Negative inputs count as zero.
func EstimateVRAMMB(bytes int64, ctx, slots int) uint64 {
	b := uint64(max(bytes, 0))
	weights := b + (b+4)/5 // b x 1.2, rounded up, in integers
	const mib = 1 << 20
	hi, tokens := bits.Mul64(uint64(max(ctx, 0)), uint64(max(slots, 0)))
	hi2, kv := bits.Mul64(tokens, KVBytesPerToken)
	total, carry := bits.Add64(weights, kv, 0)
	if hi|hi2|carry != 0 { // no GPU has this anyway; saturate rather than wrap
		return math.MaxUint64 / mib
	}
	return total/mib + min(total%mib, 1)
}

// Check says why e cannot start on this hive, "" when it can: its path is
// missing (the sim engine needs none), its engine is unknown, or the engine
// cannot run (Engine.Missing, after ResolveEngines).
func (e Entry) Check(engines map[string]*Engine) string {
	eng := engines[e.Engine]
	sim := e.Engine == EngineSim || (eng != nil && eng.Sim)
	if !sim {
		if _, err := os.Stat(e.Path); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Sprintf("model path %s does not exist", e.Path)
			}
			return fmt.Sprintf("model path: %v", err)
		}
	}
	if eng == nil {
		return fmt.Sprintf("unknown engine %q (known: %s)", e.Engine, strings.Join(engineNames(engines), ", "))
	}
	return eng.Missing
}
