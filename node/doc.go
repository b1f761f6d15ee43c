// Package node is one `rbee node` process: it wires the gossip membership, the
// control plane (node/queen), the hive (node/hive, on a node with the hive
// role), the data plane (node/proxy), the uplink (this node's one session to
// the queen: its transport, and the dispatch of what arrives on it), the feed
// relay and the HTTP API together, and owns every goroutine they need.
//
// Main types: Node (New, Run, Leave, Close) and Config (with DefaultConfig).
// The documents it serves and the client that reads them are node/api's.
//
// Lifetimes: New binds the sockets; Run serves until its context ends (stop
// now) or the node leaves; Leave is the graceful stop (tell the cluster, let
// requests in flight finish until the caller's context ends), Close the
// immediate one, which also frees a node that never ran.
//
// The node never reads flags, environment variables or globals: cmd/rbee
// builds a Config. It never calls os.Exit or installs signal handlers. The
// queen, the hive and the data plane never import each other or this
// package: each sees the node through the small interfaces it defines
// (queen.Membership; hive.Collector, hive.Leases; proxy.Uplink, proxy.Queues,
// proxy.WorkerEndpoints).
package node
