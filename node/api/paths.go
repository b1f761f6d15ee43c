package api

import (
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Default ports: 7833 for HTTP (the API, feed and dashboard) and 7946 for
// gossip (memberlist's and serf's usual port).
const (
	DefaultHTTPPort   = 7833
	DefaultGossipPort = 7946
)

// DefaultHiveTTL is how long a hive counts as online after its last report
// (the seed notes: three missed one-second reports). It is a node's default,
// and what `rbee top` uses between two views of the cluster.
const DefaultHiveTTL = 3 * time.Second

// rbee's own paths, served by every node.
const (
	PathHealth = "/healthz"
	// PathReady answers 200 once the node follows a queen that knows the
	// cluster (and a hive's first report reached it), 503 with why before.
	PathReady   = "/readyz"
	PathCluster = "/v1/cluster"
	// PathUsage is the cluster's token usage by API key and model.
	PathUsage        = "/v1/usage"
	PathAdminJoin    = "/v1/admin/join"
	PathAdminLeave   = "/v1/admin/leave"
	PathAdminMembers = "/v1/admin/members"
	PathAdminWorkers = "/v1/admin/workers"
	// PathAdminModelCopy copies a model from the hives that hold it into
	// the node's --models-dir (POST, {"model": NAME}; the answer is
	// newline-delimited JSON: progress, then done or error).
	PathAdminModelCopy = "/v1/admin/models/copy"
	// PathAdminModelPull pulls a model from a Hugging Face hub or a URL
	// into the node's --models-dir (POST, {"ref": REF}; answered as a
	// copy is); DELETE PathAdminModels/{model} removes one of that
	// folder's models from the catalog and the disk.
	PathAdminModelPull = "/v1/admin/models/pull"
	PathAdminModels    = "/v1/admin/models"
	// PathHiveHeartbeat is where the seed's hives post their telemetry.
	PathHiveHeartbeat = "/v1/hive-heartbeat"
	// PathFeed is the live feed (WebSocket, or SSE) of hive_telemetry and
	// queen events; PathSession is a node's session to the queen.
	PathFeed    = wsapi.FeedPath
	PathSession = wsapi.SessionPath
	// PathHiveProxy prefixes an inference path on the hive that owns the
	// leased worker: POST /v1/hive/proxy/v1/chat/completions.
	PathHiveProxy = "/v1/hive/proxy"
	// PathHiveFiles lists a catalog model's files (GET
	// /v1/hive/files/{model}) and serves each, with ranges (GET
	// /v1/hive/files/{model}/{path...}), to the peers that copy it.
	PathHiveFiles = "/v1/hive/files"
)

// The OpenAI-compatible API every node serves. Any other OpenAI-style POST
// under /v1/ routes the same way; these are the ones rbee treats specially.
const (
	PathChat        = "/v1/chat/completions"
	PathCompletions = "/v1/completions"
	PathEmbeddings  = "/v1/embeddings"
	PathModels      = "/v1/models"
	// PathResponses is OpenAI's Responses API, which the Vercel AI SDK's
	// default provider calls.
	PathResponses = "/v1/responses"
)
