// Package node is one `rbee node` process: it wires the gossip membership, the
// control plane (node/queen), the data plane (node/proxy), the uplink (this
// node's one session to the queen, on which a hive reports its telemetry and
// every node asks for leases), the feed relay and the HTTP API together, and
// owns every goroutine they need.
//
// Main types: Node (New, Run, Leave, Close), Config (with DefaultConfig),
// Collector (how a hive sees its machine's workers), ClusterView (the
// /v1/cluster document) and Client (what the CLI calls a running node with).
//
// Lifetimes: New binds the sockets; Run serves until its context ends (stop
// now) or the node leaves; Leave is the graceful stop (tell the cluster, let
// requests in flight finish until the caller's context ends), Close the
// immediate one, which also frees a node that never ran.
//
// The node never reads flags, environment variables or globals: cmd/rbee
// builds a Config. It never calls os.Exit or installs signal handlers. The two
// planes never import each other or this package: each sees the node through
// the small interfaces it defines (queen.Membership; proxy.Uplink,
// proxy.Queues, proxy.WorkerEndpoints).
package node
