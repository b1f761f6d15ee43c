// Package wsapi is rbee's control plane on the wire: the JSON messages that
// hives, the queen and feed readers exchange over WebSocket
// (github.com/coder/websocket), the cluster-key authentication of those
// sessions, and the fan-out hub behind the read-only feed.
//
// The main types are the messages (ProcessStats, HiveTelemetry, QueenEvent and
// the session handshake), Key (the cluster key and everything derived from it),
// Accept/Dial (the authenticated hive session) and Hub (the feed fan-out).
//
// The JSON shapes of ProcessStats and of the hive_telemetry and queen events are
// kept field for field from the original design notes: third-party dashboards
// depend on them. New fields may be added; existing ones never change name or
// type.
//
// This package must never trust a byte it reads: every decoder has a size limit
// and returns an error (and a close code) instead of panicking, and one bad peer
// never affects another session.
package wsapi
