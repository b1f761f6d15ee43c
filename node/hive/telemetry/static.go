package telemetry

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	gnet "github.com/shirou/gopsutil/v3/net"
)

// DefaultStaticGroup is the group of workers named with --worker, which rbee
// did not start (Ollama, a vLLM container...).
const DefaultStaticGroup = "ext"

// WorkerSpec is a worker given on the command line or in a config file:
// `URL[,model=NAME][,slots=N][,group=G][,instance=I]`.
type WorkerSpec struct {
	URL      string // base URL of its OpenAI-compatible API, without /v1
	Group    string
	Instance string // default: the URL's port
	Model    string // empty: ask the worker, else its command line
	Slots    int    // 0: ask the worker, else 1
	Port     int
	// Fixed says what ParseWorkerSpec changed in what the user wrote, for
	// the caller to warn about; "" when nothing.
	Fixed string
}

// ParseWorkerSpec reads one --worker value. The URL must name its port (a
// server on port 80 that was meant to be 8080 would only show up later as
// a worker that is down); a trailing /v1 is dropped, since rbee adds the
// API's own paths (/v1/chat/completions) to it, and Fixed says so.
func ParseWorkerSpec(s string) (WorkerSpec, error) {
	parts := strings.Split(s, ",")
	raw := strings.TrimSpace(parts[0])
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return WorkerSpec{}, fmt.Errorf("worker %q: want a URL such as http://127.0.0.1:11434", s)
	case u.Scheme != "http" && u.Scheme != "https":
		return WorkerSpec{}, fmt.Errorf("worker %q: scheme %q, want http or https (such as http://127.0.0.1:11434)", s, u.Scheme)
	case u.Host == "":
		return WorkerSpec{}, fmt.Errorf("worker %q: want a URL such as http://127.0.0.1:11434", s)
	}
	port := u.Port()
	if port == "" {
		return WorkerSpec{}, fmt.Errorf("worker %q: no port: name the port the server listens on, such as %s://%s:8080", s, u.Scheme, u.Hostname())
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return WorkerSpec{}, fmt.Errorf("worker %q: bad port %q", s, port)
	}
	path, fixed := strings.TrimRight(u.Path, "/"), ""
	if base, ok := strings.CutSuffix(path, "/v1"); ok {
		path = base
		fixed = fmt.Sprintf("dropped the trailing /v1 of %s: rbee adds the API's paths (/v1/chat/completions) itself", strings.TrimSpace(parts[0]))
	}
	w := WorkerSpec{URL: u.Scheme + "://" + u.Host + path, Group: DefaultStaticGroup, Instance: port, Port: p, Fixed: fixed}
	for _, kv := range parts[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || v == "" {
			return WorkerSpec{}, fmt.Errorf("worker %q: option %q: want key=value", s, kv)
		}
		switch k {
		case "model":
			w.Model = v
		case "slots":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 4096 {
				return WorkerSpec{}, fmt.Errorf("worker %q: slots %q: want a number from 1 to 4096", s, v)
			}
			w.Slots = n
		case "group":
			w.Group = v
		case "instance":
			w.Instance = v
		default:
			return WorkerSpec{}, fmt.Errorf("worker %q: unknown option %q (model, slots, group, instance)", s, k)
		}
	}
	return w, nil
}

// PIDListeningOn returns the process listening on TCP port, when this node
// can see it (same PID namespace, and root or the same user for other users'
// sockets). It walks every process's file descriptors, so call it when a
// worker is first seen or its pid vanished, not every tick.
func PIDListeningOn(ctx context.Context, port int) (int32, error) {
	conns, err := gnet.ConnectionsWithContext(ctx, "tcp")
	if err != nil {
		return 0, fmt.Errorf("list tcp sockets: %w", err)
	}
	for _, c := range conns {
		if c.Status == "LISTEN" && int(c.Laddr.Port) == port && c.Pid > 0 {
			return c.Pid, nil
		}
	}
	return 0, fmt.Errorf("no visible process listens on port %d", port)
}
