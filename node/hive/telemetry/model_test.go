package telemetry

import (
	"slices"
	"strings"
	"testing"
)

// Command lines as /proc/PID/cmdline shows them: an entry script run by its
// interpreter appears as `python3 /usr/local/bin/vllm ...`.
func TestModelFromCmdline_RealCommandLines(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cmdline   string
		wantModel string
		wantSlots int
	}{
		{"llama-server -m gguf with -np",
			"llama-server -m ./models/llama-3.2-1b-instruct-q4_k_m.gguf --port 8080 -np 4 -c 8192",
			"llama-3.2-1b-instruct-q4_k_m", 4},
		{"llama-server --model= absolute path with --parallel",
			"/opt/llama.cpp/build/bin/llama-server --model=/srv/models/Qwen2.5-7B-Instruct-Q5_K_M.gguf --host 127.0.0.1 --port 8081 --parallel 8 -ngl 99",
			"Qwen2.5-7B-Instruct-Q5_K_M", 8},
		{"llama-server -hf names the repo",
			"llama-server -hf ggml-org/gemma-3-1b-it-GGUF --port 8082",
			"ggml-org/gemma-3-1b-it-GGUF", 0},
		{"llama-server --hf-repo with --hf-file keeps the repo",
			"llama-server --hf-repo bartowski/Llama-3.2-3B-Instruct-GGUF --hf-file Llama-3.2-3B-Instruct-Q4_K_M.gguf -np 2",
			"bartowski/Llama-3.2-3B-Instruct-GGUF", 2},
		{"llama-server --alias is the served name",
			"llama-server -m /models/mistral-7b-instruct-v0.3.Q4_K_M.gguf --alias mistral-7b --port 8083",
			"mistral-7b", 0},
		{"llama-server -a is its short --alias",
			"llama-server -a tiny -m /models/tinyllama-1.1b.gguf",
			"tiny", 0},
		{"split gguf is named by the whole model",
			"llama-server -m /models/Llama-3.3-70B-Instruct-Q4_K_M-00001-of-00002.gguf -np 2",
			"Llama-3.3-70B-Instruct-Q4_K_M", 2},
		{"vllm serve positional with max-num-seqs",
			"vllm serve meta-llama/Llama-3.2-1B-Instruct --port 8000 --max-num-seqs 64",
			"meta-llama/Llama-3.2-1B-Instruct", 64},
		{"vllm entry script run by its interpreter",
			"/usr/bin/python3 /usr/local/bin/vllm serve Qwen/Qwen2.5-0.5B-Instruct --gpu-memory-utilization 0.5 --max-num-seqs=32",
			"Qwen/Qwen2.5-0.5B-Instruct", 32},
		{"vllm served-model-name wins over the model directory",
			"python3 -m vllm.entrypoints.openai.api_server --model /models/x --served-model-name llama-3.2-1b",
			"llama-3.2-1b", 0},
		{"vllm served-model-name written before the model",
			"vllm serve --served-model-name=chat /models/Llama-3.2-1B-Instruct",
			"chat", 0},
		{"vllm model directory gives its base name",
			"python -m vllm.entrypoints.openai.api_server --model /models/Llama-3.2-1B-Instruct/ --port 8000",
			"Llama-3.2-1B-Instruct", 0},
		{"sglang model-path HuggingFace id",
			"python -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct --port 30000",
			"meta-llama/Llama-3.1-8B-Instruct", 0},
		{"sglang max-running-requests and a local directory",
			"python3 -m sglang.launch_server --model-path=/data/models/Qwen2.5-7B-Instruct --host 0.0.0.0 --port 30001 --max-running-requests 48",
			"Qwen2.5-7B-Instruct", 48},
		{"ollama runner blob has no recoverable name",
			"/usr/local/bin/ollama runner --model /root/.ollama/models/blobs/sha256-abc --ctx-size 8192 --batch-size 512 --n-gpu-layers 29 --threads 8 --parallel 4 --port 40000",
			"", 4},
		{"ollama runner with the new engine",
			"/usr/bin/ollama runner --ollama-engine --model /usr/share/ollama/.ollama/models/blobs/sha256-74701a8c35f6c8d9a4b91f3f3497643001d63e0c7a84e085bed452548fa88d45 --port 39423",
			"", 0},
		{"ollama serve names no model", "/usr/local/bin/ollama serve", "", 0},
		{"gguf path without a flag", "./llamafile-0.8.13 --server --nobrowser /models/phi-3-mini-4k-instruct.Q4_K_M.GGUF", "phi-3-mini-4k-instruct.Q4_K_M", 0},
		{"llama-cpp-python through its module", "python3 -m llama_cpp.server --model ./models/gemma-2-2b-it-Q4_K_M.gguf --n_ctx 4096", "gemma-2-2b-it-Q4_K_M", 0},
		{"python's own -m is not the model", "python3 -m http.server 8000", "", 0},
		{"unrelated program", "/usr/sbin/sshd -D -o AuthorizedKeysCommand=/usr/bin/true", "", 0},
		{"unrelated -a is not an alias", "/usr/bin/rsync -a src dst", "", 0},
		{"empty argv", "", "", 0},
		{"flag at the end has no value", "llama-server --port 8080 -m", "", 0},
		{"flag followed by a flag has no value", "llama-server -m --port 8080 -np", "", 0},
		{"negative or silly slots are unknown", "llama-server -m a.gguf -np -1 --max-num-seqs 1000000", "a", 0},
		{"slot value that is not a number", "vllm serve org/m --max-num-seqs lots", "org/m", 0},
		{"last repeat of a flag wins", "llama-server -m old.gguf -m new.gguf", "new", 0},
		{"after -- nothing is a flag", "llama-server -m a.gguf -- -m b.gguf", "a", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			if tc.cmdline != "" {
				args = strings.Fields(tc.cmdline)
			}
			before := slices.Clone(args)
			model, slots := ModelFromCmdline(args)
			if model != tc.wantModel || slots != tc.wantSlots {
				t.Errorf("ModelFromCmdline(%q) = %q, %d; want %q, %d", tc.cmdline, model, slots, tc.wantModel, tc.wantSlots)
			}
			if !slices.Equal(args, before) {
				t.Errorf("ModelFromCmdline changed its argv: %q", args)
			}
		})
	}
}

// The collector reads cmdline with NUL separators, so one argument may hold
// spaces; such an argument is a shell script, not a file name.
func TestModelFromCmdline_ShellScriptArgumentIsNotAModelFile(t *testing.T) {
	model, _ := ModelFromCmdline([]string{"/bin/sh", "-c", "exec llama-server -m /models/a.gguf"})
	if model != "" {
		t.Errorf("model = %q, want none from a shell's script text", model)
	}
}

func FuzzModelFromCmdline(f *testing.F) {
	for _, seed := range []string{
		"llama-server\x00-m\x00./m.gguf\x00-np\x004",
		"python3\x00-m\x00vllm.entrypoints.openai.api_server\x00--model\x00/models/x",
		"python3\x00-m",
		"python\x00-X\x00",
		"/usr/local/bin/ollama\x00runner\x00--model\x00/blobs/sha256-abc",
		"vllm\x00serve",
		"x\x00--model=\x00--parallel=",
		"0\x00-m\x00/ 0", // found by fuzzing: a path whose base starts with a space
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, cmdline string) {
		model, slots := ModelFromCmdline(strings.Split(cmdline, "\x00"))
		if slots < 0 || slots > maxSlots {
			t.Errorf("slots = %d, want 0..%d", slots, maxSlots)
		}
		if model != strings.TrimSpace(model) {
			t.Errorf("model = %q, want no surrounding space", model)
		}
	})
}
