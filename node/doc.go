// Package node is one `rbee node` process: it wires the gossip membership,
// the queen's registry and feed, the hive's telemetry session and the HTTP API
// together, and owns every goroutine they need.
//
// Main types: Node (New, Run, Leave), Config (with DefaultConfig), Registry
// (the queen's last telemetry per hive) and Collector (how a hive sees its
// machine's workers).
//
// The node never reads flags, environment variables or globals: cmd/rbee
// builds a Config. It never calls os.Exit or installs signal handlers.
package node
