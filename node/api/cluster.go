package api

import (
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Health is the /healthz document. Its fields are in the order the node
// always wrote them (by name).
type Health struct {
	GossipAddr string `json:"gossip_addr"`
	Node       string `json:"node"`
	// Queen is the queen this node sees; empty while there is none.
	Queen   string `json:"queen"`
	Status  string `json:"status"`
	Version string `json:"version"`
}

// MemberView is one member in /v1/cluster and /v1/admin/members.
type MemberView struct {
	Name       string   `json:"name"`
	GossipAddr string   `json:"gossip_addr"`
	HTTPAddr   string   `json:"http_addr"`
	Roles      []string `json:"roles"`
	Status     string   `json:"status"`
	Queen      bool     `json:"queen"`
	Priority   int      `json:"queen_priority"`
	Version    string   `json:"version"`
	// Revision is the node's protocol revision (wsapi.Revision); omitted
	// for 0, which builds before revisions are.
	Revision int `json:"revision,omitempty"`
}

// HiveView is one hive in /v1/cluster.
type HiveView struct {
	HiveID   string               `json:"hive_id"`
	Online   bool                 `json:"online"`
	LastSeen time.Time            `json:"last_seen"`
	Workers  []wsapi.ProcessStats `json:"workers"`
	// Leases are the requests the hive serves now.
	Leases []wsapi.LeaseInfo `json:"leases,omitempty"`
	// The model lifecycle, as the hive reported it (see wsapi/models.go).
	Catalog []wsapi.CatalogEntry  `json:"catalog,omitempty"`
	GPUs    []wsapi.GPUInfo       `json:"gpus,omitempty"`
	Managed []wsapi.ManagedWorker `json:"managed,omitempty"`
	// ModelsDirFreeBytes is the free space of its --models-dir (0 without
	// one); CopyEngines the engines it serves copied or pulled models with.
	ModelsDirFreeBytes uint64   `json:"models_dir_free_bytes,omitempty"`
	CopyEngines        []string `json:"copy_engines,omitempty"`
}

// ClusterView is the /v1/cluster document.
type ClusterView struct {
	Node    string       `json:"node"`
	Queen   string       `json:"queen"`
	Members []MemberView `json:"members"`
	Hives   []HiveView   `json:"hives"`
	// HivesError says why hives is empty on a node that could not ask the
	// queen.
	HivesError string `json:"hives_error,omitempty"`
	// Queues is each model's waiting requests, leases and slots;
	// RequestsPerS the leases granted per second lately (both from the
	// queen).
	Queues       []wsapi.QueueStats `json:"queues"`
	RequestsPerS float64            `json:"requests_per_s"`
}

// UsageView is the /v1/usage document.
type UsageView struct {
	// Node is the node asked, Queen the one that summed.
	Node  string `json:"node"`
	Queen string `json:"queen"`
	// SinceS is the span asked for, in seconds; the rows cover it
	// rounded out to whole ten-minute buckets.
	SinceS int64            `json:"since_s"`
	Rows   []wsapi.UsageRow `json:"rows"`
}
