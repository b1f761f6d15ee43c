package modelfile

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// ggml tensor types the test writes, with their block layout.
const (
	typeF32  = 0
	typeQ4K  = 12
	typeQ6K  = 14
	typeBF16 = 30
)

func typeBytes(typ uint32, elems uint64) uint64 {
	switch typ {
	case typeF32:
		return elems * 4
	case typeBF16:
		return elems * 2
	case typeQ4K:
		return elems / 256 * 144
	case typeQ6K:
		return elems / 256 * 210
	}
	panic("unknown type")
}

type ggufKV struct {
	key string
	val any // string, uint32, float32, bool, []string
}

type ggufTensor struct {
	name  string
	shape []uint64
	typ   uint32
}

// writeGGUF writes a GGUF v3 file: the header as llama.cpp's writer lays
// it out, then the tensor data as a hole (the file is sparse: the parser
// checks the data fits but reads none of it).
func writeGGUF(t testing.TB, path string, kvs []ggufKV, tensors []ggufTensor) {
	t.Helper()
	b := ggufHeader(kvs, tensors)
	var data uint64
	for _, tn := range tensors {
		data = align(data) + tensorBytes(tn)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(align(uint64(len(b))) + data)); err != nil {
		t.Fatal(err)
	}
}

func align(n uint64) uint64 { return (n + 31) / 32 * 32 }

func tensorBytes(tn ggufTensor) uint64 {
	elems := uint64(1)
	for _, d := range tn.shape {
		elems *= d
	}
	return typeBytes(tn.typ, elems)
}

func ggufHeader(kvs []ggufKV, tensors []ggufTensor) []byte {
	le := binary.LittleEndian
	b := []byte("GGUF")
	b = le.AppendUint32(b, 3)
	b = le.AppendUint64(b, uint64(len(tensors)))
	b = le.AppendUint64(b, uint64(len(kvs)))
	str := func(s string) {
		b = le.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
	}
	for _, kv := range kvs {
		str(kv.key)
		switch v := kv.val.(type) {
		case string:
			b = le.AppendUint32(b, ggufString)
			str(v)
		case uint32:
			b = le.AppendUint32(b, ggufUint32)
			b = le.AppendUint32(b, v)
		case float32:
			b = le.AppendUint32(b, ggufFloat32)
			b = le.AppendUint32(b, math.Float32bits(v))
		case bool:
			b = le.AppendUint32(b, ggufBool)
			if v {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		case []string:
			b = le.AppendUint32(b, ggufArray)
			b = le.AppendUint32(b, ggufString)
			b = le.AppendUint64(b, uint64(len(v)))
			for _, s := range v {
				str(s)
			}
		default:
			panic("unknown value")
		}
	}
	var off uint64
	for _, tn := range tensors {
		str(tn.name)
		b = le.AppendUint32(b, uint32(len(tn.shape)))
		for _, d := range tn.shape {
			b = le.AppendUint64(b, d)
		}
		b = le.AppendUint32(b, tn.typ)
		off = align(off)
		b = le.AppendUint64(b, off)
		off += tensorBytes(tn)
	}
	return b
}

// llamaShape is a Llama-like transformer for the test writer.
type llamaShape struct {
	arch                        string
	layers, hidden, ffn, vocab  uint64
	heads, kvHeads, ctxTrain    uint64
	qkvBias, tiedOutput, rope64 bool
}

// q4KM lays out tensors as llama.cpp's Q4_K_M does (llama-quant.cpp):
// Q4_K everywhere but attn_v and ffn_down in the "use more bits" layers and
// the output, which are Q6_K; norms and biases F32.
func (s llamaShape) q4KM() ([]ggufKV, []ggufTensor) {
	a := s.arch
	kvs := []ggufKV{
		{"general.architecture", a},
		{"general.name", "test " + a},
		{"general.file_type", uint32(15)}, // MOSTLY_Q4_K_M
		{a + ".block_count", uint32(s.layers)},
		{a + ".context_length", uint32(s.ctxTrain)},
		{a + ".embedding_length", uint32(s.hidden)},
		{a + ".feed_forward_length", uint32(s.ffn)},
		{a + ".attention.head_count", uint32(s.heads)},
		{a + ".attention.head_count_kv", uint32(s.kvHeads)},
		{a + ".rope.dimension_count", uint32(s.hidden / s.heads)},
		{a + ".attention.layer_norm_rms_epsilon", float32(1e-5)},
		{a + ".vocab_size", uint32(s.vocab)},
		{"tokenizer.ggml.model", "gpt2"},
		{"tokenizer.chat_template", "{{ messages }}"},
	}
	kvDim := s.hidden / s.heads * s.kvHeads
	ts := []ggufTensor{{"token_embd.weight", []uint64{s.hidden, s.vocab}, typeQ4K}}
	if s.rope64 {
		ts = append(ts, ggufTensor{"rope_freqs.weight", []uint64{64}, typeF32})
	}
	for i := range s.layers {
		more := i < s.layers/8 || i >= 7*s.layers/8 || (i-s.layers/8)%3 == 2
		vd := uint32(typeQ4K)
		if more {
			vd = typeQ6K
		}
		p := "blk." + itoa(i) + "."
		ts = append(ts,
			ggufTensor{p + "attn_norm.weight", []uint64{s.hidden}, typeF32},
			ggufTensor{p + "attn_q.weight", []uint64{s.hidden, s.hidden}, typeQ4K},
			ggufTensor{p + "attn_k.weight", []uint64{s.hidden, kvDim}, typeQ4K},
			ggufTensor{p + "attn_v.weight", []uint64{s.hidden, kvDim}, vd},
			ggufTensor{p + "attn_output.weight", []uint64{s.hidden, s.hidden}, typeQ4K},
			ggufTensor{p + "ffn_norm.weight", []uint64{s.hidden}, typeF32},
			ggufTensor{p + "ffn_gate.weight", []uint64{s.hidden, s.ffn}, typeQ4K},
			ggufTensor{p + "ffn_up.weight", []uint64{s.hidden, s.ffn}, typeQ4K},
			ggufTensor{p + "ffn_down.weight", []uint64{s.ffn, s.hidden}, vd},
		)
		if s.qkvBias {
			ts = append(ts,
				ggufTensor{p + "attn_q.bias", []uint64{s.hidden}, typeF32},
				ggufTensor{p + "attn_k.bias", []uint64{kvDim}, typeF32},
				ggufTensor{p + "attn_v.bias", []uint64{kvDim}, typeF32},
			)
		}
	}
	ts = append(ts, ggufTensor{"output_norm.weight", []uint64{s.hidden}, typeF32})
	if !s.tiedOutput {
		ts = append(ts, ggufTensor{"output.weight", []uint64{s.hidden, s.vocab}, typeQ6K})
	}
	return kvs, ts
}

func itoa(n uint64) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func writeShape(t testing.TB, s llamaShape) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), s.arch+".gguf")
	kvs, ts := s.q4KM()
	writeGGUF(t, path, kvs, ts)
	return path
}
