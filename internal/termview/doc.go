// Package termview draws the cluster for a terminal: `rbee status` and `rbee
// top` (a /v1/cluster snapshot, api.ClusterView, as tables) and `rbee usage`
// (api.UsageView). It is pure: documents in, text out.
//
// RenderStatus and StatusLines lay a snapshot out as a summary and tables
// (members, queues, workers, and the model lifecycle's managed workers, GPUs
// and catalogs) that fit a screen: StatusOptions give its width, at which
// columns give way in a set order and then cells are shortened, and its
// height, at which rows are elided with a "+N more" line. Worker states may
// be painted in colour; the colours never count towards a width.
//
// TopState is `rbee top`'s model of the cluster: the last snapshot with the
// feed's messages (wsapi.HiveTelemetry, wsapi.QueenEvent) applied on top, as
// TopUpdates, and the connection's state. TopLines draws one frame of it,
// TopFrame turns that into bytes for a terminal in raw mode, and TopKey says
// what a key press means.
//
// Every string from the network is made safe for a terminal (control
// characters, escape sequences among them, become '?') before it is printed.
//
// The package reads no flags or environment (ScreenOptions is handed
// NO_COLOR), does no network I/O, starts no goroutine and owns no clock: the
// time a rendering depends on is passed in. It imports no rbee package but
// node/api and wsapi (the documents) and scheduler (the worker states the
// queen sends): never the node, so that the CLI draws a cluster without
// linking the server.
package termview
