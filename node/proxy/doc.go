// Package proxy is the data plane: the OpenAI-compatible API every node
// serves, and the hive's end of a request.
//
// An entry node admits a request (admission.go: its body within the node's
// budget, a valid model its API key may use), asks the queen for a lease
// through its LeaseClient (over the node's one session to the queen, which it
// sees only as an Uplink), and proxies to the hive that owns the leased
// worker; the hive end (HandleHiveProxy) checks the lease against its own
// table of requests in flight and proxies to the worker on loopback, then
// returns the lease when the answer ends. Answers, streamed or not, are copied
// back unchanged.
//
// What routes is one rule for both ends (InferencePath): any POST under /v1/
// but rbee's own paths, its model read from a JSON body or a multipart form.
// A Responses API follow-up goes to the worker that made the response it
// names, which the entry node remembers (affinity.go) and asks the queen for;
// the turns of one conversation, which the entry node names (conversation.go),
// go to the worker that holds its prompt in its KV cache.
//
// Main types: Proxy (New, the HTTP handlers, ReportLeases for the hive's
// telemetry), LeaseClient (asks and re-asks the queen for leases), and the
// interfaces it sees the rest of the node through: Uplink, Queues and
// WorkerEndpoints.
//
// It must never import node/queen: the queen is not on the data path, and a
// request in flight goes on when the queen dies. It reads no flags or
// environment and starts no goroutine that outlives a request.
package proxy
