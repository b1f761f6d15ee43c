package modelfile

// Formats a Facts can come from.
const (
	FormatGGUF        = "gguf"
	FormatSafetensors = "safetensors"
)

// Options are what the engine will be asked to run with. Zero values mean 1.
type Options struct {
	// Ctx is the context in tokens. For llama-server it is -c, the context
	// of all slots together; for a Hugging Face folder it is each
	// sequence's, so the KV cache holds Ctx x Slots tokens.
	Ctx   int
	Slots int
}

// Facts is what a model's files say about it, and the VRAM it needs.
type Facts struct {
	Format       string // FormatGGUF or FormatSafetensors
	Architecture string // "llama", "qwen2"; config.json's model_type for a folder
	Parameters   uint64
	// Quantization is the GGUF file type ("Q4_K_M") or the safetensors
	// dtype holding most of the weights ("BF16").
	Quantization string
	Layers       int
	KVHeads      int
	HeadDim      int
	// ContextLength is the context the model was trained for.
	ContextLength int
	// ChatTemplate: the file carries one (GGUF tokenizer.chat_template, a
	// folder's tokenizer_config.json or chat_template.jinja).
	ChatTemplate bool
	// WeightBytes and KVBytes are the weights and the KV cache on the GPU;
	// VRAMBytes is all the engine needs there (with compute buffers for a
	// GGUF file), 0 when it cannot be worked out.
	WeightBytes uint64
	KVBytes     uint64
	VRAMBytes   uint64
}

func (o Options) norm() (ctx, slots int) {
	return max(o.Ctx, 1), max(o.Slots, 1)
}
