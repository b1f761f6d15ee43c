// Package modelfile reads what a model's files say about the model: a GGUF
// file's header (through gguf-parser-go), a Hugging Face folder's config.json
// and safetensors headers. From them it works out the VRAM an engine needs
// for a context and a number of slots with every layer on the GPU.
//
// Main entry points: ReadGGUF, ReadHF, both returning Facts.
//
// The files may be hostile (a --models-dir is whatever lands in a folder):
// nothing here may panic on a bad file, and nothing allocates more than a
// header cap (MaxGGUFHeaderBytes, MaxSafetensorsHeaderBytes,
// MaxConfigBytes) whatever a length field claims. The package does no
// other I/O than reading the files it is given, starts no goroutines and
// reads no clock.
package modelfile
