// Package usage is the entry node's ledger of what each API key did with each
// model: requests, prompt and completion tokens, and how long the requests
// waited for a lease.
//
// The Ledger keeps cumulative totals per key and model since the node
// started, and ten-minute buckets for the last 24 hours, which answer "since"
// questions and travel to the queen (wsapi.UsageReport) so that the cluster's
// totals outlive any one queen. Sum turns buckets, the ledger's own or those
// the queen gathered from every node, into rows with queue-wait percentiles.
//
// It does no I/O and starts no goroutines: the node's uplink asks it for
// reports, and time comes in with every call.
package usage
