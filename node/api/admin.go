package api

// JoinRequest is the body of POST /v1/admin/join.
type JoinRequest struct {
	Addrs []string `json:"addrs"`
}

// JoinResult answers POST /v1/admin/join: how many seeds answered.
type JoinResult struct {
	Joined int `json:"joined"`
}

// LeaveRequest is the body of POST /v1/admin/leave, which may be empty.
type LeaveRequest struct {
	// DrainMS is how long requests in flight may take to finish; 0 cuts
	// them at once.
	DrainMS int64 `json:"drain_ms,omitempty"`
}

// LeaveResult answers POST /v1/admin/leave, before the node leaves.
type LeaveResult struct {
	Leaving bool   `json:"leaving"`
	Node    string `json:"node"`
}

// WorkerRegistration is the body of POST /v1/admin/workers.
type WorkerRegistration struct {
	Group    string `json:"group"`
	Instance string `json:"instance"`
	PID      int32  `json:"pid"`
	Model    string `json:"model,omitempty"`
	Slots    int    `json:"slots,omitempty"`
}

// WorkerRegistered answers POST /v1/admin/workers.
type WorkerRegistered struct {
	Registered bool `json:"registered"`
}

// HeartbeatAccepted is the answer to a heartbeat the queen took
// (POST /v1/hive-heartbeat).
type HeartbeatAccepted struct {
	Accepted bool   `json:"accepted"`
	HiveID   string `json:"hive_id"`
	Queen    string `json:"queen"`
}
