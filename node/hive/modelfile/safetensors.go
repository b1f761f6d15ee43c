package modelfile

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"
)

// MaxSafetensorsHeaderBytes caps a safetensors header, as the format's own
// reference implementation does (100 MB): it bounds what a hostile length
// makes us read and decode.
const MaxSafetensorsHeaderBytes = 100_000_000

// safetensorsSum is what a safetensors header holds: bytes and elements by
// dtype.
type safetensorsSum struct {
	Bytes  map[string]uint64
	Params uint64
}

// readSafetensorsHeader reads the header of a safetensors file of size
// bytes: an 8-byte little-endian length, then that much JSON naming each
// tensor's dtype, shape and data offsets. The offsets must lie within the
// file and agree with the shape and dtype.
func readSafetensorsHeader(r io.Reader, size int64) (safetensorsSum, error) {
	var lb [8]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return safetensorsSum{}, fmt.Errorf("read header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lb[:])
	if n > MaxSafetensorsHeaderBytes {
		return safetensorsSum{}, fmt.Errorf("header of %d bytes, at most %d", n, MaxSafetensorsHeaderBytes)
	}
	if size < 8 || n > uint64(size-8) {
		return safetensorsSum{}, fmt.Errorf("header of %d bytes in a file of %d", n, size)
	}
	hdr := make([]byte, n)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return safetensorsSum{}, fmt.Errorf("read header: %w", err)
	}
	var tensors map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &tensors); err != nil {
		return safetensorsSum{}, fmt.Errorf("decode header: %w", err)
	}
	data := uint64(size) - 8 - n
	sum := safetensorsSum{Bytes: map[string]uint64{}}
	for name, raw := range tensors {
		if name == "__metadata__" {
			continue
		}
		var t struct {
			DType       string   `json:"dtype"`
			Shape       []uint64 `json:"shape"`
			DataOffsets []uint64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &t); err != nil {
			return safetensorsSum{}, fmt.Errorf("tensor %q: %w", name, err)
		}
		if len(t.DataOffsets) != 2 || t.DataOffsets[0] > t.DataOffsets[1] || t.DataOffsets[1] > data {
			return safetensorsSum{}, fmt.Errorf("tensor %q: data offsets %v outside the %d bytes of data", name, t.DataOffsets, data)
		}
		elems := uint64(1)
		for _, d := range t.Shape {
			hi, lo := bits.Mul64(elems, d)
			if hi != 0 {
				return safetensorsSum{}, fmt.Errorf("tensor %q: shape %v overflows", name, t.Shape)
			}
			elems = lo
		}
		nbytes := t.DataOffsets[1] - t.DataOffsets[0]
		if width := dtypeBits(t.DType); width > 0 {
			if hi, lo := bits.Mul64(elems, width); hi != 0 || (lo+7)/8 != nbytes {
				return safetensorsSum{}, fmt.Errorf("tensor %q: %d bytes for shape %v of %s", name, nbytes, t.Shape, t.DType)
			}
		}
		sum.Bytes[strings.ToUpper(t.DType)] += nbytes
		if p, carry := bits.Add64(sum.Params, elems, 0); carry == 0 {
			sum.Params = p
		} else {
			return safetensorsSum{}, fmt.Errorf("tensor %q: parameter count overflows", name)
		}
	}
	if len(sum.Bytes) == 0 {
		return safetensorsSum{}, errors.New("no tensors")
	}
	return sum, nil
}

// dtypeBits is the bits per element of a safetensors dtype, 0 for one not
// known (its size is then taken from its offsets, unchecked).
func dtypeBits(dtype string) uint64 {
	switch strings.ToUpper(dtype) {
	case "BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0":
		return 8
	case "U16", "I16", "F16", "BF16":
		return 16
	case "U32", "I32", "F32":
		return 32
	case "U64", "I64", "F64":
		return 64
	case "F4", "F6_E2M3", "F6_E3M2":
		return 0 // packed; trust the offsets
	}
	return 0
}
