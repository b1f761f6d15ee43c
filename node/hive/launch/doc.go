// Package launch starts an inference worker the way `rbee worker run` does:
// inside its own cgroup, rbee.slice/<group>/<instance>, so the hive can
// measure it, with signals passed through and the child's exit code returned.
//
// Where cgroup v2 is not writable it starts the worker anyway; the caller
// then registers it with the local node by pid.
//
// An engine a hive starts (Start) is marked with a token in its environment
// and recorded in a directory while it runs (leftover.go); KillLeftovers,
// called by the next hive, kills what a hive killed outright left running.
// This package writes to cgroupfs and to those records and nothing else,
// signals only processes it started or that carry their token, and never
// reads a node's state.
package launch
