package modelfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// MaxConfigBytes caps config.json and tokenizer_config.json (real ones are
// a few KiB, tokenizer configs with many added tokens a few MiB).
const MaxConfigBytes = 16 << 20

// hfConfig is what config.json says about the shape of the model.
// Multimodal models keep the language model's under text_config.
type hfConfig struct {
	ModelType   string    `json:"model_type"`
	Layers      int       `json:"num_hidden_layers"`
	Heads       int       `json:"num_attention_heads"`
	KVHeads     int       `json:"num_key_value_heads"`
	Hidden      int       `json:"hidden_size"`
	HeadDim     int       `json:"head_dim"`
	MaxPosition int       `json:"max_position_embeddings"`
	TorchDType  string    `json:"torch_dtype"`
	DType       string    `json:"dtype"`
	TextConfig  *hfConfig `json:"text_config"`
}

// ReadHF reads a Hugging Face folder (config.json and the *.safetensors
// next to it) and estimates what an engine needs on the GPU for o: the
// weights plus an fp16/bf16 KV cache of Ctx x Slots tokens (the model's
// dtype; 2 bytes when it says none). It does not count the engine's own
// buffers: vLLM takes what --gpu-memory-utilization gives it anyway.
func ReadHF(dir string, o Options) (Facts, error) {
	raw, err := readCapped(filepath.Join(dir, "config.json"), MaxConfigBytes)
	if err != nil {
		return Facts{}, fmt.Errorf("read hf folder %s: %w", dir, err)
	}
	var cfg hfConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return Facts{}, fmt.Errorf("read hf folder %s: config.json: %w", dir, err)
	}
	if cfg.Layers == 0 && cfg.TextConfig != nil {
		mt := cfg.ModelType
		cfg = *cfg.TextConfig
		cfg.ModelType = cmpOr(mt, cfg.ModelType)
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(paths) == 0 {
		return Facts{}, fmt.Errorf("read hf folder %s: no *.safetensors", dir)
	}
	sort.Strings(paths)
	f := Facts{Format: FormatSafetensors, Architecture: cfg.ModelType, Layers: max(cfg.Layers, 0), ContextLength: max(cfg.MaxPosition, 0)}
	byDType := map[string]uint64{}
	for _, p := range paths {
		sum, err := readSafetensorsFile(p)
		if err != nil {
			return Facts{}, fmt.Errorf("read hf folder %s: %w", dir, err)
		}
		for dt, n := range sum.Bytes {
			byDType[dt] = satAdd(byDType[dt], n)
		}
		f.Parameters = satAdd(f.Parameters, sum.Params)
	}
	var top uint64
	for dt, n := range byDType {
		f.WeightBytes = satAdd(f.WeightBytes, n)
		if n > top || n == top && dt < f.Quantization {
			top, f.Quantization = n, dt
		}
	}
	f.KVHeads = cfg.KVHeads
	if f.KVHeads <= 0 {
		f.KVHeads = max(cfg.Heads, 0)
	}
	f.HeadDim = cfg.HeadDim
	if f.HeadDim <= 0 && cfg.Heads > 0 {
		f.HeadDim = max(cfg.Hidden, 0) / cfg.Heads
	}
	f.ChatTemplate = hasChatTemplate(dir)
	if f.Layers > 0 && f.KVHeads > 0 && f.HeadDim > 0 {
		ctx, slots := o.norm()
		kvWidth := uint64(2)
		if strings.EqualFold(cmpOr(cfg.TorchDType, cfg.DType), "float32") {
			kvWidth = 4
		}
		// K and V, per layer, per KV head, per head dim, per token.
		f.KVBytes = satMul(satMul(satMul(2*kvWidth, uint64(f.Layers)), satMul(uint64(f.KVHeads), uint64(f.HeadDim))),
			satMul(uint64(ctx), uint64(slots)))
		f.VRAMBytes = satAdd(f.WeightBytes, f.KVBytes)
	}
	return f, nil
}

func readSafetensorsFile(path string) (safetensorsSum, error) {
	fh, err := os.Open(path)
	if err != nil {
		return safetensorsSum{}, err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return safetensorsSum{}, err
	}
	sum, err := readSafetensorsHeader(fh, fi.Size())
	if err != nil {
		return safetensorsSum{}, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return sum, nil
}

// hasChatTemplate: the folder has chat_template.jinja, or its
// tokenizer_config.json names a chat_template.
func hasChatTemplate(dir string) bool {
	if fi, err := os.Stat(filepath.Join(dir, "chat_template.jinja")); err == nil && fi.Mode().IsRegular() {
		return true
	}
	raw, err := readCapped(filepath.Join(dir, "tokenizer_config.json"), MaxConfigBytes)
	return err == nil && bytes.Contains(raw, []byte(`"chat_template"`))
}

// readCapped reads a file of at most limit bytes.
func readCapped(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d MiB", filepath.Base(path), limit>>20)
	}
	return b, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func satAdd(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	if c != 0 {
		return ^uint64(0)
	}
	return s
}

func satMul(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 {
		return ^uint64(0)
	}
	return lo
}
