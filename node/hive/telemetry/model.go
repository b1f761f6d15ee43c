package telemetry

import (
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Model detection from a worker's command line. It is the fallback when the
// worker's own API does not answer (APIProber), and the first guess while a
// worker is still loading. The command line of a process never changes, so
// the collector calls ModelFromCmdline once per process start, not per tick;
// it is pure and allocates little all the same.

// maxSlots bounds what a command line can claim, as --worker slots= does: a
// worker that says it serves more than this at once is misread, not huge.
const maxSlots = 4096

// Flags that name the model a worker serves, by strength. A served name is
// what the API answers to (vLLM and SGLang --served-model-name, llama-server
// --alias), so it wins over the weights it was loaded from.
var (
	servedNameFlags = []string{"--served-model-name", "--alias"}
	modelFlags      = []string{"-m", "--model", "--model-path", "-hf", "--hf-repo", "-hfr"}
	slotFlags       = []string{
		"--parallel", "-np", // llama-server; also the Ollama runner
		"--max-num-seqs",         // vLLM
		"--max-running-requests", // SGLang
	}
)

// ModelFromCmdline names the model a worker serves and how many requests it
// serves at once, from its argv (/proc/PID/cmdline split on NUL). model is ""
// when the command line does not say (ollama serve, an Ollama blob whose name
// only the Ollama server knows, an unrelated program); slots is 0 when it does
// not say, and the caller applies its default.
//
// Names are what a user would ask for: a .gguf file or a local directory
// gives its base name without the extension, a HuggingFace id (org/name) is
// kept as it is.
func ModelFromCmdline(args []string) (model string, slots int) {
	prog, rest := programArgs(args)
	if prog == "" {
		return "", 0
	}
	flags := scanFlags(rest, prog)

	for _, f := range slotFlags {
		if n, err := strconv.Atoi(flags[f]); err == nil && n > 0 && n <= maxSlots {
			slots = n
			break
		}
	}

	for _, group := range [][]string{servedNameFlags, modelFlags} {
		for _, f := range group {
			if v, ok := flags[f]; ok {
				return modelName(v), slots
			}
		}
	}
	// vllm serve NAME: the model is the first argument after the verb.
	if isVLLM(prog) {
		for i, a := range rest {
			if a == "serve" && i+1 < len(rest) && !strings.HasPrefix(rest[i+1], "-") {
				return modelName(rest[i+1]), slots
			}
		}
	}
	// Anything else that loads a GGUF file names it somewhere (llamafile,
	// koboldcpp, a wrapper script).
	for _, a := range rest {
		if _, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "-") {
			a = v
		}
		if isGGUF(a) && !strings.ContainsAny(a, " \t\n") {
			return modelName(a), slots
		}
	}
	return "", slots
}

// programArgs returns the program a command line runs and its arguments.
// A Python interpreter is looked through, because vLLM and SGLang run as
// `python -m vllm.entrypoints.openai.api_server ...` or, through their entry
// script, as `/usr/bin/python3 /usr/local/bin/vllm serve ...`; the
// interpreter's own -m is not the model.
func programArgs(args []string) (string, []string) {
	if len(args) == 0 || args[0] == "" {
		return "", nil
	}
	prog := path.Base(args[0])
	if !pythonName.MatchString(prog) {
		return prog, args[1:]
	}
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-m" || a == "-c":
			if i+1 >= len(args) || a == "-c" {
				return "", nil // python -c CODE runs no model server we know
			}
			return args[i+1], args[i+2:]
		case strings.HasPrefix(a, "-m"):
			return a[2:], args[i+1:]
		case a == "-X" || a == "-W":
			i++ // takes a value
		case a == "-" || !strings.HasPrefix(a, "-"):
			return path.Base(a), args[i+1:]
		}
	}
	return "", nil
}

var pythonName = regexp.MustCompile(`^python[0-9.]*$`)

func isVLLM(prog string) bool {
	return prog == "vllm" || strings.HasPrefix(prog, "vllm.")
}

// scanFlags returns the last value of each flag this file knows, in both
// --flag value and --flag=value forms. A flag at the end with no value, or
// followed by another flag, has none. Flag parsing stops at "--".
func scanFlags(args []string, prog string) map[string]string {
	known := func(name string) bool {
		if name == "-a" { // llama-server's short --alias; other programs' -a is anything
			return strings.HasPrefix(prog, "llama")
		}
		for _, group := range [][]string{servedNameFlags, modelFlags, slotFlags} {
			for _, f := range group {
				if f == name {
					return true
				}
			}
		}
		return false
	}
	out := make(map[string]string)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, v, hasValue := strings.Cut(a, "=")
		if !known(name) {
			continue
		}
		if !hasValue {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "-") {
				continue
			}
			i++
			v = args[i]
		}
		if name == "-a" {
			name = "--alias"
		}
		if v != "" {
			out[name] = v
		}
	}
	return out
}

// modelName turns what a worker was given into the name a user asks for.
// An Ollama blob (…/blobs/sha256-…) carries no name at all: "" says so
// instead of passing a digest off as a model.
func modelName(v string) string {
	v = strings.TrimSpace(v)
	if v == "" {
		return ""
	}
	base := strings.TrimSpace(path.Base(path.Clean(v)))
	if strings.HasPrefix(base, "sha256-") || strings.HasPrefix(base, "sha256:") {
		return ""
	}
	if isGGUF(base) {
		name := base[:len(base)-len(".gguf")]
		// A split model's first shard names the whole model.
		return ggufShard.ReplaceAllString(name, "")
	}
	if isLocalPath(v) {
		if base == "/" || base == "." || base == ".." {
			return ""
		}
		return base
	}
	return v // a HuggingFace id (org/name) or a served name, as it is
}

var ggufShard = regexp.MustCompile(`-\d{5}-of-\d{5}$`)

func isGGUF(s string) bool {
	return len(s) > len(".gguf") && strings.EqualFold(s[len(s)-len(".gguf"):], ".gguf")
}

// isLocalPath tells a filesystem path from a HuggingFace id, which is
// org/name: one slash, no leading dot, slash or tilde.
func isLocalPath(v string) bool {
	if strings.HasPrefix(v, "/") || strings.HasPrefix(v, ".") || strings.HasPrefix(v, "~") {
		return true
	}
	return strings.Count(strings.TrimRight(v, "/"), "/") > 1
}
