package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/scheduler"
	"github.com/rbee/rbee/wsapi"
)

// TestE2E_DeadWorkerShowsDown: `rbee node run --worker` naming a port nothing
// listens on is shown down with why in `rbee status --json` and `rbee
// status`, its model is not served, and a request for it gets a 503 at once
// naming the worker and the cause. A trailing /v1 on the URL is dropped with a
// warning.
func TestE2E_DeadWorkerShowsDown(t *testing.T) {
	c := newCluster(t)
	_, port, err := net.SplitHostPort(closedAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	url := "http://127.0.0.1:" + port
	p := c.start(nodeSpec{name: "n0", extra: []string{"--worker", url + "/v1/,model=ghost", "--queue-timeout", "1m"}})[0]
	args := []string{"--http-addr", p.httpAddr, "--cluster-key-file", c.keyFile}
	cause := "GET " + url + "/health: connection refused"

	var ours *wsapi.ProcessStats
	testutil.Every(50*time.Millisecond).Eventually(t, 20*time.Second, "rbee status --json shows the worker down", func() error {
		out, errOut, err := runRbee(append([]string{"status", "--json"}, args...)...)
		if err != nil {
			return fmt.Errorf("%w: %s", err, errOut)
		}
		var v api.ClusterView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("rbee status --json printed %q: %v", out, err)
		}
		ours = nil
		for _, h := range v.Hives {
			for i, w := range h.Workers {
				if w.Group == "ext" && w.Instance == port {
					ours = &h.Workers[i]
				}
			}
		}
		if ours == nil || ours.State != scheduler.StateDown {
			return errors.New(out)
		}
		for _, q := range v.Queues {
			if q.Model == "ghost" && q.Slots > 0 {
				t.Errorf("queue %+v: a down worker's slots count", q)
			}
		}
		return nil
	})
	if ours.StateReason != "the hive cannot reach it: "+cause || ours.Health != wsapi.HealthDown || ours.HealthReason != cause {
		t.Errorf("worker: state %q (%q), health %q (%q); want down because %s", ours.State, ours.StateReason, ours.Health, ours.HealthReason, cause)
	}
	out := c.rbee(append([]string{"status"}, args...)...)
	lines := strings.Split(out, "\n")
	if !testutil.HasLineWith(lines, []string{"n0", "ext/" + port, "down"}) || !testutil.HasLineWith(lines, []string{"down workers: n0/ext/" + port, cause}) {
		t.Errorf("rbee status:\n%s", out)
	}

	req, err := http.NewRequest(http.MethodPost, "http://"+p.httpAddr+"/v1/chat/completions",
		strings.NewReader(`{"model":"ghost","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	// c.hc gives up after 2 s, far short of the minute the request
	// would wait for a slot.
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatalf("request for ghost: %v (did it wait for a slot?)", err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	resp.Body.Close()
	want := `worker n0/ext/` + port + ` is down (` + cause + `)`
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body.String(), want) {
		t.Errorf("request for ghost: %d %s, want 503 with %s", resp.StatusCode, body.String(), want)
	}
	if log := p.log(); !strings.Contains(log, "dropped the trailing /v1") || !strings.Contains(log, "level=WARN") {
		t.Errorf("no warning about the /v1 dropped from --worker in the log:\n%s", log)
	}
}

// TestE2E_WorkerFlagChecks: a --worker URL without a port or with another
// scheme is refused at start, naming the flag and the fix.
func TestE2E_WorkerFlagChecks(t *testing.T) {
	for _, tc := range []struct{ worker, want string }{
		{"localhost", `--worker: worker "localhost": no port: name the port the server listens on, such as http://localhost:8080`},
		{"https://gpu-box/v1", "no port"},
		{"unix:///run/llama.sock", `scheme "unix", want http or https`},
	} {
		t.Run(tc.worker, func(t *testing.T) {
			_, errOut, err := runRbee("node", "run", "--name", "n0", "--http-addr", closedAddr(t),
				"--gossip-addr", closedAddr(t), "--worker", tc.worker)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("rbee node run --worker %s: %v, stderr %q; want exit 1 saying %q", tc.worker, err, errOut, tc.want)
			}
		})
	}
}
