// Package models is a hive's model lifecycle: what it can serve (its catalog of
// model files and engine templates), starting engines on demand, readiness,
// idle unload and eviction.
//
// Its main types: an Engine is a command template (engine.go), an Entry one
// model a hive can serve (entry.go), and a Manager, built by New from a Config
// (manager.go), starts an Entry's engine when the queen asks, and again in
// place when it crashes after serving well (start.go), gives the ollama
// engine its model over Ollama's API (ollama.go), waits for the engine to
// answer ready, its weights loaded (readiness.go), stops it when idle,
// evicted or the hive closes (stop.go), tells the queen how it goes
// (report.go), keeps what it learned of each model under each engine across
// restarts (learned.go) and each engine's output (logs.go).
//
// engine.go, entry.go, words.go and gpus.go are the pure parsing layer:
// --engine, --model and --sim-gpus flag values, the models directory scan,
// size and VRAM estimates. They start no process and never run a shell; the
// only I/O is stat/readdir of model paths and exec.LookPath of engine
// binaries.
//
// The Manager never runs a shell either: an engine's argv is its template
// expanded once (Engine.Argv), never interpreted again. It stops only the
// engines it started, and it never owns the process: config arrives in
// Config, hooks into the hive are Config's functions, and Close stops every
// engine it started.
package models
