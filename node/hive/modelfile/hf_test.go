package modelfile

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type stTensor struct {
	name  string
	shape []uint64
}

// writeSafetensors writes a safetensors file of BF16 tensors: the header,
// then the data as a hole.
func writeSafetensors(t testing.TB, path string, tensors []stTensor) {
	t.Helper()
	hdr := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	var off uint64
	for _, tn := range tensors {
		n := uint64(2)
		for _, d := range tn.shape {
			n *= d
		}
		hdr[tn.name] = map[string]any{"dtype": "BF16", "shape": tn.shape, "data_offsets": []uint64{off, off + n}}
		off += n
	}
	j, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(j)))
	b = append(b, j...)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(len(b)) + int64(off)); err != nil {
		t.Fatal(err)
	}
}

// writeHFLlama writes a Hugging Face folder of a Llama-shaped model in
// BF16 over shards files, with its config.json.
func writeHFLlama(t testing.TB, s llamaShape, shards int) string {
	t.Helper()
	dir := t.TempDir()
	headDim := s.hidden / s.heads
	kvDim := headDim * s.kvHeads
	cfg := map[string]any{"model_type": s.arch, "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
		"num_key_value_heads": s.kvHeads, "hidden_size": s.hidden, "intermediate_size": s.ffn,
		"max_position_embeddings": s.ctxTrain, "torch_dtype": "bfloat16", "vocab_size": s.vocab}
	j, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), j, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"chat_template": "{{ messages }}"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	all := []stTensor{{"model.embed_tokens.weight", []uint64{s.vocab, s.hidden}}, {"model.norm.weight", []uint64{s.hidden}}}
	if !s.tiedOutput {
		all = append(all, stTensor{"lm_head.weight", []uint64{s.vocab, s.hidden}})
	}
	for i := range s.layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		all = append(all,
			stTensor{p + "input_layernorm.weight", []uint64{s.hidden}},
			stTensor{p + "self_attn.q_proj.weight", []uint64{s.hidden, s.hidden}},
			stTensor{p + "self_attn.k_proj.weight", []uint64{kvDim, s.hidden}},
			stTensor{p + "self_attn.v_proj.weight", []uint64{kvDim, s.hidden}},
			stTensor{p + "self_attn.o_proj.weight", []uint64{s.hidden, s.hidden}},
			stTensor{p + "post_attention_layernorm.weight", []uint64{s.hidden}},
			stTensor{p + "mlp.gate_proj.weight", []uint64{s.ffn, s.hidden}},
			stTensor{p + "mlp.up_proj.weight", []uint64{s.ffn, s.hidden}},
			stTensor{p + "mlp.down_proj.weight", []uint64{s.hidden, s.ffn}},
		)
	}
	per := (len(all) + shards - 1) / shards
	for i := 0; i < shards; i++ {
		part := all[i*per : min((i+1)*per, len(all))]
		writeSafetensors(t, filepath.Join(dir, fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, shards)), part)
	}
	return dir
}

// Published: Llama-3.2-1B has 1.24B parameters (model.safetensors 2.47 GB),
// Llama-3.1-8B 8.03B (4 shards, 16.1 GB), both BF16.
func TestReadHF_WellKnownShapesMatchPublishedSizes(t *testing.T) {
	cases := []struct {
		name      string
		shape     llamaShape
		shards    int
		params    float64
		fileBytes float64
	}{
		{"Llama-3.2-1B", llamaShape{arch: "llama", layers: 16, hidden: 2048, ffn: 8192, vocab: 128256, heads: 32, kvHeads: 8,
			ctxTrain: 131072, tiedOutput: true}, 1, 1.24e9, 2.47e9},
		{"Llama-3.1-8B", llamaShape{arch: "llama", layers: 32, hidden: 4096, ffn: 14336, vocab: 128256, heads: 32, kvHeads: 8,
			ctxTrain: 131072}, 4, 8.03e9, 16.06e9},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeHFLlama(t, tc.shape, tc.shards)
			f, err := ReadHF(dir, Options{Ctx: 4096, Slots: 4})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %+v (VRAM %.2f GiB)", tc.name, f, float64(f.VRAMBytes)/gib)
			headDim := tc.shape.hidden / tc.shape.heads
			if f.Format != FormatSafetensors || f.Architecture != "llama" || f.Quantization != "BF16" ||
				f.Layers != int(tc.shape.layers) || f.KVHeads != int(tc.shape.kvHeads) || f.HeadDim != int(headDim) ||
				f.ContextLength != 131072 || !f.ChatTemplate {
				t.Errorf("facts %+v", f)
			}
			if !within(float64(f.Parameters), tc.params, 0.01) || !within(float64(f.WeightBytes), tc.fileBytes, 0.01) {
				t.Errorf("parameters %d (published %.0f), weights %d (published %.0f)", f.Parameters, tc.params, f.WeightBytes, tc.fileBytes)
			}
			// K and V x layers x KV heads x head dim x 2 bytes x 4096 tokens x 4 slots.
			if want := 2 * tc.shape.layers * tc.shape.kvHeads * headDim * 2 * 4096 * 4; f.KVBytes != want || f.VRAMBytes != f.WeightBytes+want {
				t.Errorf("KV %d, VRAM %d; want KV %d", f.KVBytes, f.VRAMBytes, want)
			}
		})
	}
}

func TestReadHF_MultimodalConfigUsesTextConfig(t *testing.T) {
	dir := t.TempDir()
	writeSafetensors(t, filepath.Join(dir, "model.safetensors"), []stTensor{{"w", []uint64{16, 16}}})
	cfg := `{"model_type":"llava","text_config":{"model_type":"llama","num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":2,"hidden_size":512}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := ReadHF(dir, Options{Ctx: 100, Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	if f.Architecture != "llava" || f.Layers != 4 || f.KVHeads != 2 || f.HeadDim != 64 || f.KVBytes != 2*4*2*64*2*100 || f.ChatTemplate {
		t.Fatalf("facts %+v", f)
	}
}

func TestReadHF_UnknownShapeHasWeightsButNoEstimate(t *testing.T) {
	dir := t.TempDir()
	writeSafetensors(t, filepath.Join(dir, "model.safetensors"), []stTensor{{"w", []uint64{16, 16}}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"custom"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := ReadHF(dir, Options{Ctx: 100, Slots: 1})
	if err != nil || f.WeightBytes != 512 || f.Parameters != 256 || f.VRAMBytes != 0 {
		t.Fatalf("facts %+v, %v", f, err)
	}
}

func stFile(hdr string, data int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	return append(append(b, hdr...), make([]byte, data)...)
}

func TestReadSafetensorsHeader_RefusesBadHeaders(t *testing.T) {
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"short", []byte{1, 2}, "read header length"},
		{"huge length", binary.LittleEndian.AppendUint64(nil, 1<<60), "at most"},
		{"length past the file", binary.LittleEndian.AppendUint64(nil, 1000), "in a file of"},
		{"not json", stFile("nope", 0), "decode header"},
		{"no tensors", stFile(`{"__metadata__":{}}`, 0), "no tensors"},
		{"offsets past the data", stFile(`{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}`, 4), "outside"},
		{"size disagrees with shape", stFile(`{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,4]}}`, 8), "bytes for shape"},
		{"shape overflows", stFile(`{"w":{"dtype":"F16","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 8), "overflows"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readSafetensorsHeader(bytes.NewReader(tc.b), int64(len(tc.b)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// FuzzSafetensorsHeader: no input panics, and what is accepted adds up
// within the file.
func FuzzSafetensorsHeader(f *testing.F) {
	f.Add(stFile(`{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, 12))
	f.Add(stFile(`{"w":{"dtype":"X9","shape":[],"data_offsets":[0,0]}}`, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		sum, err := readSafetensorsHeader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		var total uint64
		for _, n := range sum.Bytes {
			total += n
		}
		if total > uint64(len(b)) {
			t.Fatalf("%d bytes of tensors in a file of %d", total, len(b))
		}
	})
}
