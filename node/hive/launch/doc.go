// Package launch starts an inference worker the way `rbee worker run` does:
// inside its own cgroup, rbee.slice/<group>/<instance>, so the hive can
// measure it, with signals passed through and the child's exit code returned.
//
// Where cgroup v2 is not writable it starts the worker anyway; the caller
// then registers it with the local node by pid. This package writes to
// cgroupfs and nothing else; it never reads a node's state.
package launch
