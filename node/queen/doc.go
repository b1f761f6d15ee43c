// Package queen is the control plane: what a node does while it is the
// elected queen.
//
// It accepts every node's session (HandleSession), keeps the cluster view
// (Registry: each hive's last telemetry), hosts the pure scheduler (leases and
// queues; grants and refusals are delivered on the sessions of the nodes that
// asked), sets each worker's state by the scheduler's one rule, publishes the
// feed (hive_telemetry as it arrives, a queen event every interval) and
// exports the cluster's metrics. It follows the election through Membership
// and drops everything when another node becomes queen.
//
// Main types: Queen (New, Run, HandleSession, Close), Registry (whose hives it lists as api.HiveView),
// and the interface it sees the rest of the node through, Membership.
//
// It must never import node/proxy: the queen is not on the data path. It
// reads no flags or environment; every goroutine it starts ends by Close.
package queen
