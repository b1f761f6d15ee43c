// Package api is rbee's HTTP API as its clients see it: every path a node
// serves, every JSON document it answers with (the /v1/cluster view, the
// member list, /v1/usage, the admin calls' bodies and answers, /healthz), and
// Client, which calls a running node as the CLI does.
//
// The node (the server) and every client (cmd/rbee, the end-to-end tests,
// the dashboard's tests) share these definitions, so a document cannot drift
// between the side that writes it and the side that reads it.
//
// It imports no other rbee package but wsapi (whose messages some documents
// carry): the CLI reads the cluster without linking the server, and the
// server's packages (queen, proxy, hive) may use its documents without
// importing one another.
package api
