// Package scheduler decides which worker serves which request. It is pure
// logic: no I/O, no goroutines, no clock of its own (every call takes now),
// and not safe for concurrent use (the queen holds it under one mutex).
//
// It is pull-based: a request is granted only against a free slot of an
// eligible worker, and a returned slot pulls the next waiting request for
// that worker's model. Telemetry, up to a second old, decides who is eligible;
// slots and leases decide how many requests a worker gets, so no worker is
// ever handed more concurrent requests than it has slots.
//
// The Scheduler and its Config are in scheduler.go. A hive's report comes in
// through UpdateModels (lifecycle.go: what it can start, its GPUs, the
// workers rbee runs there) and UpdateHive (workers.go: its workers and the
// leases they serve); a request through Request (queue.go), which grants a
// Lease at once or queues it in its model's fair queue (fair.go); Release
// (lease.go) hands a freed slot to the next request, and Tick (tick.go) does
// what time does. Every decision returns its Grants, Failures (errors.go) or
// Starts (placement.go: which model to start on which hive's GPU) for the
// queen to send. Which worker takes a request is pick's (pick.go, over the
// index in index.go and the one state rule in state.go), bent by a
// conversation's last worker (affinity.go), a request for one worker
// (pin.go), each key's caps (caps.go) and the hives that left (gone.go); how
// a requested name matches a worker's model is modelnames.go's. Models
// (stats.go) and Waits (waits.go) report, for the feed, /v1/models and the
// clients that wait.
package scheduler
