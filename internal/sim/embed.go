package sim

import (
	"encoding/base64"
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"net/http"
)

type embeddingList struct {
	Object string          `json:"object"`
	Data   []embeddingItem `json:"data"`
	Model  string          `json:"model"`
	Usage  embeddingUsage  `json:"usage"`
}

type embeddingItem struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string
}

type embeddingUsage struct {
	PromptTokens int `json:"prompt_tokens"`
	TotalTokens  int `json:"total_tokens"`
}

// handleEmbeddings answers /v1/embeddings. An embedding holds a slot for the
// time to first token, as prompt processing would.
func (s *Simulator) handleEmbeddings(w http.ResponseWriter, r *http.Request, c *call) outcome {
	body, err := readBody(w, r)
	if err != nil {
		return reject(w, err)
	}
	req, err := decodeEmbedding(body, s.cfg.EmbeddingDim)
	if err != nil {
		return reject(w, err)
	}
	if o := s.acquire(r, c); o != served {
		return o
	}
	defer s.release()
	if o := s.newPacer(r, c, s.cfg.TTFT).wait(0); o != served {
		return o
	}
	dim := req.Dim
	if dim == 0 {
		dim = s.cfg.EmbeddingDim
	}
	out := embeddingList{Object: "list", Model: req.Model, Data: make([]embeddingItem, len(req.Inputs))}
	if out.Model == "" {
		out.Model = s.cfg.Model
	}
	for i, in := range req.Inputs {
		v := Embedding(in.key, dim)
		item := embeddingItem{Object: "embedding", Index: i, Embedding: v}
		if req.Base64 {
			item.Embedding = encodeBase64(v)
		}
		out.Data[i] = item
		out.Usage.PromptTokens += in.tokens
	}
	out.Usage.TotalTokens = out.Usage.PromptTokens
	writeJSON(w, http.StatusOK, out)
	s.countTokens(out.Usage.PromptTokens, 0, 0)
	return served
}

// Embedding returns the vector the simulator gives text: dim pseudo-random
// normal components seeded by a hash of text, scaled to unit length. The
// same text always gets the same vector. Token-id inputs are keyed by their
// ids, so they never collide with a text.
func Embedding(text string, dim int) []float32 {
	h := fnv.New128a()
	_, _ = h.Write([]byte(text))
	sum := h.Sum(nil)
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(sum[:8]), binary.LittleEndian.Uint64(sum[8:])))
	v64 := make([]float64, dim)
	var norm float64
	for i := range v64 {
		v64[i] = rng.NormFloat64()
		norm += v64[i] * v64[i]
	}
	norm = math.Sqrt(norm)
	if norm == 0 { // all draws zero: cannot happen in practice, but stay finite
		v64[0], norm = 1, 1
	}
	v := make([]float32, dim)
	for i, x := range v64 {
		v[i] = float32(x / norm)
	}
	return v
}

// encodeBase64 is OpenAI's encoding_format "base64": the float32s in little
// endian order, base64 (standard alphabet, padded).
func encodeBase64(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}
