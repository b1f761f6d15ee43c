package node_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/gossip"

	"github.com/rbee/rbee/node"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/nodetest"
	"github.com/rbee/rbee/wsapi"
)

func httpGet(url string) ([]byte, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// TestHTTP_Auth drives the router directly so the caller's address can be set:
// every real connection in a test comes from loopback.
func TestHTTP_Auth(t *testing.T) {
	key := mustKey(t)
	n := nodetest.Start(t, "a", nodetest.WithKey(key))
	h := n.Handler()
	remote, loop := "192.0.2.7:40000", "127.0.0.1:40000"
	tests := []struct {
		name   string
		method string
		path   string
		remote string
		auth   string
		body   string
		want   int
	}{
		{"health is open", "GET", api.PathHealth, remote, "", "", 200},
		{"cluster needs token from remote", "GET", api.PathCluster, remote, "", "", 401},
		{"cluster with wrong token", "GET", api.PathCluster, remote, "Bearer nope", "", 401},
		{"cluster with raw key instead of token", "GET", api.PathCluster, remote, "Bearer " + key.String(), "", 401},
		{"cluster with token", "GET", api.PathCluster, remote, "Bearer " + key.HTTPToken(), "", 200},
		{"cluster from loopback", "GET", api.PathCluster, loop, "", "", 200},
		{"members needs token from remote", "GET", api.PathAdminMembers, remote, "", "", 401},
		{"members with token", "GET", api.PathAdminMembers, remote, "Bearer " + key.HTTPToken(), "", 200},
		{"join needs token from remote", "POST", api.PathAdminJoin, remote, "", `{"addrs":["127.0.0.1:1"]}`, 401},
		{"join refuses the token from remote (cluster TLS only)", "POST", api.PathAdminJoin, remote, "Bearer " + key.HTTPToken(), `{"addrs":["127.0.0.1:1"]}`, 401},
		{"leave refuses the token from remote", "POST", api.PathAdminLeave, remote, "Bearer " + key.HTTPToken(), "", 401},
		{"worker registration refuses the token from remote", "POST", api.PathAdminWorkers, remote, "Bearer " + key.HTTPToken(), `{}`, 401},
		{"hive proxy refuses the token from remote", "POST", api.PathHiveProxy + api.PathChat, remote, "Bearer " + key.HTTPToken(), `{}`, 401},
		{"plain session from remote refused", "GET", wsapi.SessionPath, remote, "", "", 403},
		{"leave needs token from remote", "POST", api.PathAdminLeave, remote, "", "", 401},
		{"feed needs token from remote", "GET", wsapi.FeedPath, remote, "", "", 401},
		{"join with malformed body", "POST", api.PathAdminJoin, loop, "", `{"addrs":`, 400},
		{"join with no addresses", "POST", api.PathAdminJoin, loop, "", `{"addrs":[]}`, 400},
		{"unknown path", "GET", "/v1/nope", loop, "", "", 404},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			req.RemoteAddr, req.Host = tc.remote, "127.0.0.1:7833"
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("%s %s from %s: status %d, want %d: %s", tc.method, tc.path, tc.remote, rec.Code, tc.want, rec.Body)
			}
			if rec.Code >= 400 {
				var e struct {
					Error struct {
						Message string `json:"message"`
						Type    string `json:"type"`
					} `json:"error"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
					t.Errorf("error body is not in the OpenAI error shape: %s", rec.Body)
				}
			}
		})
	}
	// The feed also takes the token as a query parameter, since browsers
	// cannot set headers on a WebSocket; without an upgrade it answers 400
	// from the websocket library, which shows the auth check passed.
	req := httptest.NewRequest("GET", wsapi.FeedPath+"?token="+key.HTTPToken(), nil)
	req.RemoteAddr = remote
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code == http.StatusUnauthorized {
		t.Errorf("feed with ?token= refused: %s", rec.Body)
	}
}

func TestHTTP_LeaveStopsNode(t *testing.T) {
	n := nodetest.Start(t, "a")
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Post("http://"+n.HTTPAddr()+api.PathAdminLeave, "application/json", bytes.NewReader(nil))
	if err != nil {
		t.Fatal(err)
	}
	// The whole answer must arrive although the node closes every
	// connection as it leaves.
	var res api.LeaveResult
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !res.Leaving || res.Node != "a" {
		t.Fatalf("leave answered %d %+v (read: %v), want 200 leaving a", resp.StatusCode, res, err)
	}
	exited, err := n.Exited(10 * time.Second)
	if !exited {
		t.Fatal("node still running 10 s after leave")
	}
	if err != nil {
		t.Fatalf("Run returned %v after leave", err)
	}
}

func TestConfig_Validate(t *testing.T) {
	key := mustKey(t)
	tests := []struct {
		name    string
		cfg     node.Config
		wantErr error
		errText string
	}{
		{"loopback without key is fine", node.Config{Name: "a", GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, nil, ""},
		{"all interfaces without key needs insecure", node.Config{Name: "a", GossipAddr: "127.0.0.1:0", HTTPAddr: "0.0.0.0:7833"}, node.ErrNeedsKey, ""},
		{"gossip beyond loopback without key", node.Config{Name: "a", GossipAddr: ":7946", HTTPAddr: "127.0.0.1:0"}, node.ErrNeedsKey, ""},
		{"insecure allows it", node.Config{Name: "a", GossipAddr: ":7946", HTTPAddr: ":7833", Insecure: true}, nil, ""},
		{"key allows it", node.Config{Name: "a", GossipAddr: ":7946", HTTPAddr: ":7833", Key: key}, nil, ""},
		{"empty name", node.Config{GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, nil, "node name"},
		{"name with spaces", node.Config{Name: "a b", GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, nil, "node name"},
		{"unknown role", node.Config{Name: "a", GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Roles: []string{"king"}}, nil, "unknown role"},
		{"wan gossip profile", node.Config{Name: "a", GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GossipProfile: gossip.ProfileWAN}, nil, ""},
		{"unknown gossip profile", node.Config{Name: "a", GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GossipProfile: "satellite"}, nil, `unknown gossip profile "satellite" (want lan or wan)`},
		{"queue timeout beyond what a lease request may wait", node.Config{Name: "a", GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", QueueTimeout: time.Hour}, nil, "queue timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := node.ValidateConfig(tc.cfg)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "--insecure") {
					t.Errorf("error %q does not tell the user about --insecure", err)
				}
			case tc.errText != "":
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.errText)
				}
			case err != nil:
				t.Fatalf("err = %v, want nil", err)
			}
		})
	}
}

// TestHTTP_BrowserPagesCannotActForLoopbackUsers: the loopback exemption is for
// the machine's users, not for any web page open in their browser.
func TestHTTP_BrowserPagesCannotActForLoopbackUsers(t *testing.T) {
	key := mustKey(t)
	n := nodetest.Start(t, "a", nodetest.WithKey(key))
	h := n.Handler()
	loop, remote := "127.0.0.1:40000", "192.0.2.7:40000"
	tests := []struct {
		name, method, path, remote, auth, host, origin string
		want                                           int
	}{
		{"another site's page cannot make the node leave", "POST", api.PathAdminLeave, loop, "", "127.0.0.1:7833", "https://evil.example", 403},
		{"another site's page cannot read the cluster", "GET", api.PathCluster, loop, "", "127.0.0.1:7833", "http://evil.example", 403},
		{"another site's page cannot open the feed", "GET", wsapi.FeedPath, loop, "", "127.0.0.1:7833", "http://evil.example", 403},
		{"DNS rebinding is refused", "GET", api.PathCluster, loop, "", "evil.example:7833", "http://evil.example:7833", 403},
		{"DNS rebinding without Origin is refused", "GET", api.PathCluster, loop, "", "evil.example:7833", "", 403},
		{"the node's own page may read", "GET", api.PathCluster, loop, "", "127.0.0.1:7833", "http://127.0.0.1:7833", 200},
		{"localhost by name is fine", "GET", api.PathCluster, loop, "", "localhost:7833", "http://localhost:7833", 200},
		{"IPv6 loopback literal is fine", "GET", api.PathCluster, "[::1]:40000", "", "[::1]:7833", "", 200},
		{"a page elsewhere holding the token may read", "GET", api.PathCluster, remote, "Bearer " + key.HTTPToken(), "10.0.0.5:7833", "https://dash.example", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, nil)
			req.RemoteAddr, req.Host = tc.remote, tc.host
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.want, rec.Body)
			}
		})
	}
}

// A reverse proxy on the node's machine (nginx terminating TLS) passes on
// requests from anywhere over loopback: the headers it adds take the
// loopback exemption away.
func TestHTTP_ProxiedRequestsAreNotLocal(t *testing.T) {
	key := mustKey(t)
	n := nodetest.Start(t, "a", nodetest.WithKey(key))
	for _, hdr := range []string{"X-Forwarded-For", "Forwarded", "X-Real-IP", ""} {
		req := httptest.NewRequest("GET", api.PathCluster, nil)
		req.RemoteAddr, req.Host = "127.0.0.1:40000", "127.0.0.1:7833"
		want := http.StatusOK
		if hdr != "" {
			req.Header.Set(hdr, "203.0.113.9")
			want = http.StatusUnauthorized
		}
		rec := httptest.NewRecorder()
		n.Handler().ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("with %q: status %d, want %d: %s", hdr, rec.Code, want, rec.Body)
		}
	}
}

func TestConfig_GossipProfileChoosesTiming(t *testing.T) {
	stretched := gossip.LANTiming()
	stretched.SuspicionMult = 200
	for _, tc := range []struct {
		name string
		cfg  node.Config
		want gossip.Timing
	}{
		{"default is lan", node.Config{}, gossip.LANTiming()},
		{"lan", node.Config{GossipProfile: gossip.ProfileLAN}, gossip.LANTiming()},
		{"wan", node.Config{GossipProfile: gossip.ProfileWAN}, gossip.WANTiming()},
		{"a timing given wins", node.Config{GossipProfile: gossip.ProfileWAN, GossipTiming: stretched}, stretched},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := node.GossipTimingOf(tc.cfg); got != tc.want {
				t.Errorf("timing %+v, want %+v", got, tc.want)
			}
		})
	}
}
