package modelfile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"strings"

	gguf "github.com/gpustack/gguf-parser-go"
)

// MaxGGUFHeaderBytes caps a GGUF header (metadata and tensor infos, before
// the tensor data). The largest real ones are a few MiB (a 256k-token
// vocabulary with its merges); 64 MiB leaves room and bounds what a hostile
// file makes the parser read and allocate.
const MaxGGUFHeaderBytes = 64 << 20

// ggufMaxKeptArray caps the metadata arrays gguf-parser-go keeps in memory
// even when told to skip large ones (per-layer head counts and feed-forward
// lengths): one value per layer, and no model has this many layers.
const ggufMaxKeptArray = 1 << 16

// ErrNotGGUF is wrapped by ReadGGUF's errors for a file that is not a GGUF
// model llama.cpp could load.
var ErrNotGGUF = errors.New("not a GGUF model file")

// ReadGGUF reads a GGUF file's header and estimates what llama-server needs
// to run it with every layer on the GPU (-ngl 999) for o. It errs (wrapping
// ErrNotGGUF) for a file that is not a valid GGUF, a header past
// MaxGGUFHeaderBytes, or a file the parser cannot make sense of.
func ReadGGUF(path string, o Options) (Facts, error) {
	if err := checkGGUFFile(path); err != nil {
		return Facts{}, fmt.Errorf("read gguf %s: %w: %w", path, ErrNotGGUF, err)
	}
	f, err := parseGGUF(path, o)
	if err != nil {
		return Facts{}, fmt.Errorf("read gguf %s: %w: %w", path, ErrNotGGUF, err)
	}
	return f, nil
}

// parseGGUF runs gguf-parser-go, turning its panics (it panics on some
// metadata of the wrong type) into errors.
func parseGGUF(path string, o Options) (facts Facts, err error) {
	defer func() {
		if r := recover(); r != nil {
			facts, err = Facts{}, fmt.Errorf("parse: %v", r)
		}
	}()
	gf, err := gguf.ParseGGUFFile(path, gguf.SkipLargeMetadata())
	if err != nil {
		return Facts{}, fmt.Errorf("parse: %w", err)
	}
	if err := checkGGUFMetadata(gf.Header.MetadataKV); err != nil {
		return Facts{}, err
	}
	// gguf-parser-go checks this only when the data starts within the file.
	if len(gf.SplitSizes) == 1 {
		need, carry := bits.Add64(uint64(max(gf.TensorDataStartOffset, 0)), gf.TensorInfos.Bytes(), 0)
		if carry != 0 || need > uint64(gf.Size) {
			return Facts{}, fmt.Errorf("file of %d bytes ends before its tensor data (%d bytes): cut short?", gf.Size, need)
		}
	}
	meta := gf.Metadata()
	if meta.Type != "model" {
		return Facts{}, fmt.Errorf("a %s, not a model", meta.Type)
	}
	arch := gf.Architecture()
	ctx, slots := o.norm()
	est := gf.EstimateLLaMACppRun(
		gguf.WithLLaMACppContextSize(int32(min(ctx, 1<<30))),
		gguf.WithParallelSize(int32(min(slots, 1<<20))),
		gguf.WithLLaMACppOffloadLayers(math.MaxUint64), // every layer, as -ngl 999
	)
	facts = Facts{
		Format:        FormatGGUF,
		Architecture:  arch.Architecture,
		Parameters:    uint64(gf.ModelParameters),
		Quantization:  quantization(meta),
		Layers:        int(min(arch.BlockCount, 1<<20)),
		KVHeads:       int(min(arch.AttentionHeadCountKV, 1<<20)),
		HeadDim:       int(arch.AttentionKeyLength),
		ContextLength: int(min(arch.MaximumContextLength, 1<<40)),
	}
	_, facts.ChatTemplate = gf.Header.MetadataKV.Get("tokenizer.chat_template")
	if len(est.Devices) > 1 {
		sum := est.Summarize(true, 0, 0)
		d := est.Devices[1]
		facts.WeightBytes = uint64(d.Weight.Sum())
		facts.KVBytes = uint64(d.KVCache.Sum())
		if len(sum.Items) > 0 && len(sum.Items[0].VRAMs) > 0 {
			facts.VRAMBytes = uint64(sum.Items[0].VRAMs[0].NonUMA)
		}
	}
	return facts, nil
}

// Caps on the model's own metadata numbers. gguf-parser-go sizes slices and
// loops by them (one per layer), so a hostile block_count would make it
// allocate and spin without end.
const (
	ggufMaxBlocks = 4096    // gguf-parser-go's own sanity bound on layers
	ggufMaxNumber = 1 << 28 // past any dimension, head count or context of a real model
)

// checkGGUFMetadata refuses integer metadata of the model (not general.*,
// tokenizer.*, split.*) past those caps.
func checkGGUFMetadata(kvs gguf.GGUFMetadataKVs) error {
	for _, kv := range kvs {
		if strings.HasPrefix(kv.Key, "general.") || strings.HasPrefix(kv.Key, "tokenizer.") || strings.HasPrefix(kv.Key, "split.") {
			continue
		}
		var v int64
		switch x := kv.Value.(type) {
		case uint8, int8, uint16, int16, int32, uint32:
			v = anyInt(x)
		case uint64:
			v = int64(min(x, math.MaxInt64))
		case int64:
			v = x
		default:
			continue
		}
		limit := int64(ggufMaxNumber)
		if strings.HasSuffix(kv.Key, ".block_count") {
			limit = ggufMaxBlocks
		}
		if v > limit || v < -limit {
			return fmt.Errorf("metadata %s = %d, past any real model (at most %d)", kv.Key, v, limit)
		}
	}
	return nil
}

func anyInt(x any) int64 {
	switch v := x.(type) {
	case uint8:
		return int64(v)
	case int8:
		return int64(v)
	case uint16:
		return int64(v)
	case int16:
		return int64(v)
	case uint32:
		return int64(v)
	case int32:
		return int64(v)
	}
	return 0
}

func quantization(m gguf.GGUFMetadata) string {
	if m.FileTypeDescriptor != "" {
		return m.FileTypeDescriptor
	}
	return strings.TrimPrefix(m.FileType.String(), "MOSTLY_")
}

// checkGGUFFile walks the header of path, and of every shard when its name
// is a shard's ("-00001-of-00003.gguf"): gguf-parser-go reads them all.
func checkGGUFFile(path string) error {
	paths := gguf.CompleteShardGGUFFilename(path)
	if paths == nil {
		paths = []string{path}
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = ggufHeaderLen(f)
		f.Close()
		if err != nil {
			if len(paths) > 1 {
				return fmt.Errorf("shard %s: %w", filepath.Base(p), err)
			}
			return err
		}
	}
	return nil
}

// ggufHeaderLen walks a GGUF header without keeping any of it and returns
// its length. It refuses what would make gguf-parser-go read or allocate
// much: a header past MaxGGUFHeaderBytes, nested arrays, a kept per-layer
// array past ggufMaxKeptArray items, an unknown value type. It does not
// judge what the values mean; the parser does.
func ggufHeaderLen(r io.Reader) (int64, error) {
	w := &ggufWalker{r: bufio.NewReader(io.LimitReader(r, MaxGGUFHeaderBytes+1))}
	err := w.walk()
	if errors.Is(err, io.ErrUnexpectedEOF) && w.n > MaxGGUFHeaderBytes {
		err = fmt.Errorf("header larger than %d MiB", MaxGGUFHeaderBytes>>20)
	}
	return w.n, err
}

type ggufWalker struct {
	r       *bufio.Reader
	bo      binary.ByteOrder
	version uint32
	n       int64
	buf     [8]byte
}

// GGUF metadata value types.
const (
	ggufUint8 = iota
	ggufInt8
	ggufUint16
	ggufInt16
	ggufUint32
	ggufInt32
	ggufFloat32
	ggufBool
	ggufString
	ggufArray
	ggufUint64
	ggufInt64
	ggufFloat64
)

func (w *ggufWalker) walk() error {
	magic, err := w.read(4)
	if err != nil {
		return fmt.Errorf("read magic: %w", err)
	}
	switch string(magic) {
	case "GGUF":
		w.bo = binary.LittleEndian
	case "FUGG":
		w.bo = binary.BigEndian
	default:
		return fmt.Errorf("bad magic %q", magic)
	}
	if w.version, err = w.u32(); err != nil {
		return fmt.Errorf("read version: %w", err)
	}
	if w.version < 1 || w.version > 3 {
		return fmt.Errorf("unsupported version %d", w.version)
	}
	tensors, err := w.count()
	if err != nil {
		return fmt.Errorf("read tensor count: %w", err)
	}
	kvs, err := w.count()
	if err != nil {
		return fmt.Errorf("read metadata count: %w", err)
	}
	// Every item takes bytes, so counts past the cap fail as a too large
	// header below; checking here saves reading up to it.
	if tensors > MaxGGUFHeaderBytes || kvs > MaxGGUFHeaderBytes {
		return fmt.Errorf("header larger than %d MiB", MaxGGUFHeaderBytes>>20)
	}
	for i := range kvs {
		if err := w.kv(); err != nil {
			return fmt.Errorf("read metadata %d: %w", i, err)
		}
	}
	for i := range tensors {
		if err := w.tensor(); err != nil {
			return fmt.Errorf("read tensor info %d: %w", i, err)
		}
	}
	return nil
}

func (w *ggufWalker) kv() error {
	key, err := w.key()
	if err != nil {
		return err
	}
	typ, err := w.u32()
	if err != nil {
		return fmt.Errorf("%s: read type: %w", key, err)
	}
	if typ != ggufArray {
		if err := w.skipValue(typ); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		return nil
	}
	elem, err := w.u32()
	if err != nil {
		return fmt.Errorf("%s: read array type: %w", key, err)
	}
	n, err := w.u64()
	if err != nil {
		return fmt.Errorf("%s: read array length: %w", key, err)
	}
	if elem == ggufArray {
		return fmt.Errorf("%s: nested array", key)
	}
	if n > MaxGGUFHeaderBytes {
		return fmt.Errorf("%s: array of %d items", key, n)
	}
	for _, kept := range []string{".feed_forward_length", ".attention.head_count", ".attention.head_count_kv", ".attention.sliding_window_pattern"} {
		if strings.HasSuffix(key, kept) && n > ggufMaxKeptArray {
			return fmt.Errorf("%s: array of %d items, at most %d", key, n, ggufMaxKeptArray)
		}
	}
	if size := fixedSize(elem); size > 0 {
		return w.skip(n * uint64(size))
	}
	for i := uint64(0); i < n; i++ {
		if err := w.skipValue(elem); err != nil {
			return fmt.Errorf("%s[%d]: %w", key, i, err)
		}
	}
	return nil
}

// key reads a metadata key, which the spec caps at 65535 bytes.
func (w *ggufWalker) key() (string, error) {
	n, err := w.count()
	if err != nil {
		return "", fmt.Errorf("read key length: %w", err)
	}
	if n > 65535 {
		return "", fmt.Errorf("key of %d bytes", n)
	}
	b, err := w.read(int(n))
	if err != nil {
		return "", fmt.Errorf("read key: %w", err)
	}
	return string(b), nil
}

func fixedSize(typ uint32) int {
	switch typ {
	case ggufUint8, ggufInt8, ggufBool:
		return 1
	case ggufUint16, ggufInt16:
		return 2
	case ggufUint32, ggufInt32, ggufFloat32:
		return 4
	case ggufUint64, ggufInt64, ggufFloat64:
		return 8
	}
	return 0
}

func (w *ggufWalker) skipValue(typ uint32) error {
	if size := fixedSize(typ); size > 0 {
		return w.skip(uint64(size))
	}
	if typ != ggufString {
		return fmt.Errorf("unknown value type %d", typ)
	}
	n, err := w.count()
	if err != nil {
		return fmt.Errorf("read string length: %w", err)
	}
	return w.skip(n)
}

func (w *ggufWalker) tensor() error {
	n, err := w.count()
	if err != nil {
		return fmt.Errorf("read name length: %w", err)
	}
	if err := w.skip(n); err != nil {
		return fmt.Errorf("read name: %w", err)
	}
	dims, err := w.u32()
	if err != nil {
		return fmt.Errorf("read dimensions: %w", err)
	}
	if dims == 0 || dims > 4 { // GGML_MAX_DIMS
		return fmt.Errorf("%d dimensions", dims)
	}
	for range dims {
		if _, err := w.count(); err != nil {
			return fmt.Errorf("read dimension: %w", err)
		}
	}
	// type (uint32) and offset (uint64)
	return w.skip(12)
}

func (w *ggufWalker) read(n int) ([]byte, error) {
	b := make([]byte, n)
	k, err := io.ReadFull(w.r, b)
	w.n += int64(k)
	return b, err
}

func (w *ggufWalker) skip(n uint64) error {
	if n > MaxGGUFHeaderBytes {
		w.n = MaxGGUFHeaderBytes + 1
		return io.ErrUnexpectedEOF
	}
	k, err := w.r.Discard(int(n))
	w.n += int64(k)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (w *ggufWalker) u32() (uint32, error) {
	k, err := io.ReadFull(w.r, w.buf[:4])
	w.n += int64(k)
	return w.bo.Uint32(w.buf[:4]), err
}

func (w *ggufWalker) u64() (uint64, error) {
	k, err := io.ReadFull(w.r, w.buf[:8])
	w.n += int64(k)
	return w.bo.Uint64(w.buf[:8]), err
}

// count reads a length: 32 bits in GGUF v1, 64 since.
func (w *ggufWalker) count() (uint64, error) {
	if w.version == 1 {
		v, err := w.u32()
		return uint64(v), err
	}
	return w.u64()
}
