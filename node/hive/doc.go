// Package hive is what a hive does for its node: the workers on its machine,
// measured (telemetry/), started and stopped on demand (models/, launch/),
// and reported to the queen.
//
// Main types: Agent (New, Run, Close), which owns the hive's one telemetry
// report a tick: it asks the Collector for the workers, adds what the model
// lifecycle knows (catalog, GPUs, the workers rbee started and their states)
// and the requests the hive serves (its lease table, which also marks the
// workers whose requests fail); it answers the queen's model_start, takes
// workers `rbee worker run` registers, and tells the hive end of a request
// where a worker listens. Collector is how it sees its machine; Leases is
// how it sees the data plane's lease table.
//
// The agent neither dials nor listens: the node's session to the queen
// carries its reports and the queen's messages, and the node's HTTP server
// the registrations. So it is tested with fakes, without sockets. It must
// never import node/proxy or node/queen (a test checks): the hive sees the
// data plane only through Leases.
package hive
