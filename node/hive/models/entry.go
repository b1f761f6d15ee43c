package models

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/rbee/rbee/node/hive/modelfile"
)

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

// Entry is one model a hive can serve.
type Entry struct {
	Name        string
	Path        string
	Engine      string   // "llama-server" for a file, "vllm" for a directory unless engine= says otherwise
	Slots       int      // concurrent sequences per replica; DefaultSlots when not given
	Ctx         int      // context length of one request (slot) in tokens; DefaultCtx when not given
	VRAMMB      uint64   // vram=MiB, 0 when not given
	LoadMS      int      // load_ms=, for the sim engine
	MaxReplicas int      // max_replicas=, 0 = no cap
	Args        []string // args=..., split with SplitWords, appended to the engine's argv
	Share       bool     // share=true: other hives may copy its files to start it (copy.go)
}

// ParseModelFlag parses one --model value:
//
//	NAME=PATH[,engine=E][,slots=N][,ctx=N][,vram=MiB][,load_ms=N][,max_replicas=N][,share=true][,args=...]
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
	case "share":
		e.Share, err = strconv.ParseBool(val)
	default:
		return errors.New("unknown option (known: engine, slots, ctx, vram, load_ms, max_replicas, share, args)")
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
// anything else, hidden names (.x) and anything deeper than one level, is
// ignored. Only a
// missing or unreadable dir is an error; an unreadable subfolder is skipped.
func ScanModelsDir(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("scan models dir: %w", err)
	}
	var out []Entry
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".") {
			// Hidden: a model being copied or pulled in, assembled
			// out of sight until it is whole.
			continue
		}
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

// EstimateVRAMMB is what a model needs when its files tell nothing better
// (ReadFacts), in MiB
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

// Where a catalog entry's VRAM figure comes from (CatalogEntry.VRAMSource),
// in the order placement prefers them.
const (
	SourceLearned     = "learned"     // measured on an earlier run on this hive
	SourceConfigured  = "configured"  // vram=
	SourceGGUF        = "gguf"        // llama.cpp's estimate from the GGUF header
	SourceSafetensors = "safetensors" // weights and KV cache from config.json and safetensors headers
	SourceSize        = "size"        // EstimateVRAMMB, for files no parser reads
)

// ReadFacts reads what e's files say about the model, for its engine's ctx
// and slots with every layer on the GPU:
//
//   - a file served by an engine that reads GGUF (llama-server, ollama), or
//     starting with GGUF's magic, must be a GGUF model: anything else is an
//     error (wrapping modelfile.ErrNotGGUF) the catalog reports as
//     unavailable, rather than an engine that fails later. A file merely
//     named *.gguf for an engine of one's own is that engine's business;
//   - a Hugging Face folder (config.json and *.safetensors) is read from
//     its config and the safetensors headers; a broken header is an error.
//     Its KV cache counts ctx tokens for each of the slots;
//   - anything else (another engine's file, a folder of another layout, the
//     sim engine) gives nil and no error: its VRAM is guessed from its size.
func ReadFacts(e Entry) (*modelfile.Facts, error) {
	if e.Engine == EngineSim || e.Path == "" {
		return nil, nil
	}
	fi, err := os.Stat(e.Path)
	if err != nil {
		return nil, nil // Check says what is wrong with the path
	}
	// An entry's ctx is each slot's; llama-server's -c is the context of
	// all slots together.
	o := modelfile.Options{Ctx: e.Ctx, Slots: e.Slots}
	var f modelfile.Facts
	switch {
	case fi.Mode().IsRegular() && (e.Engine == EngineLlamaServer || e.Engine == EngineOllama || hasGGUFMagic(e.Path)):
		f, err = modelfile.ReadGGUF(e.Path, modelfile.Options{Ctx: e.Ctx * max(e.Slots, 1), Slots: e.Slots})
	case fi.IsDir() && isHFFolder(e.Path):
		f, err = modelfile.ReadHF(e.Path, o)
	default:
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &f, nil
}

func hasGGUFMagic(path string) bool {
	fh, err := os.Open(path)
	if err != nil {
		return false
	}
	defer fh.Close()
	var b [4]byte
	_, err = io.ReadFull(fh, b[:])
	return err == nil && (string(b[:]) == "GGUF" || string(b[:]) == "FUGG")
}
