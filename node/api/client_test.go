package api

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbee/rbee/wsapi"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeNode serves the documents a node serves, from fixed values, and
// remembers the last request.
func fakeNode(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), wsapi.Key{})
	t.Cleanup(c.Close)
	return c
}

func TestClient_DecodesTheDocuments(t *testing.T) {
	var got *http.Request
	var body []byte
	c := fakeNode(t, func(w http.ResponseWriter, r *http.Request) {
		got = r
		body, _ = io.ReadAll(r.Body)
		switch r.URL.Path {
		case PathCluster:
			_ = json.NewEncoder(w).Encode(ClusterView{Node: "n1", Queen: "q", Hives: []HiveView{{HiveID: "h1", Online: true}}})
		case PathAdminMembers:
			_ = json.NewEncoder(w).Encode([]MemberView{{Name: "n1", Status: "alive", Queen: true}})
		case PathAdminJoin:
			_ = json.NewEncoder(w).Encode(JoinResult{Joined: 2})
		case PathUsage:
			_ = json.NewEncoder(w).Encode(UsageView{Node: "n1", SinceS: 3600, Rows: []wsapi.UsageRow{{Key: "a", Model: "m", Requests: 3}}})
		default:
			_ = json.NewEncoder(w).Encode(LeaveResult{Leaving: true, Node: "n1"})
		}
	})
	ctx := context.Background()

	v, err := c.Cluster(ctx)
	if err != nil || v.Queen != "q" || len(v.Hives) != 1 || v.Hives[0].HiveID != "h1" {
		t.Fatalf("Cluster: %+v, %v", v, err)
	}
	ms, err := c.Members(ctx)
	if err != nil || len(ms) != 1 || !ms[0].Queen || got.Method != http.MethodGet {
		t.Fatalf("Members: %+v, %v (%s)", ms, err, got.Method)
	}
	n, err := c.Join(ctx, []string{"10.0.0.1:7946", "10.0.0.2"})
	if err != nil || n != 2 || got.Method != http.MethodPost || got.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("Join: %d, %v (%s %s)", n, err, got.Method, got.Header.Get("Content-Type"))
	}
	var jr JoinRequest
	if err := json.Unmarshal(body, &jr); err != nil || len(jr.Addrs) != 2 {
		t.Fatalf("Join sent %q", body)
	}
	u, err := c.Usage(ctx, 90*time.Minute)
	if err != nil || len(u.Rows) != 1 || u.Rows[0].Requests != 3 || got.URL.Query().Get("since") != "1h30m0s" {
		t.Fatalf("Usage: %+v, %v (query %q)", u, err, got.URL.RawQuery)
	}
	if err := c.Leave(ctx, 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var lr LeaveRequest
	if err := json.Unmarshal(body, &lr); err != nil || lr.DrainMS != 1500 || got.URL.Path != PathAdminLeave {
		t.Fatalf("Leave sent %q to %s", body, got.URL.Path)
	}
}

func TestClient_Errors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"the error shape's message", http.StatusUnauthorized, `{"error":{"message":"missing or wrong cluster token","type":"unauthorized"}}`,
			"GET /v1/cluster: 401 Unauthorized: missing or wrong cluster token"},
		{"no error shape: the status", http.StatusBadGateway, `<html>bad gateway</html>`, "GET /v1/cluster: 502 Bad Gateway"},
		{"an answer that is not the document", http.StatusOK, `{"node": 7}`, "GET /v1/cluster: decode answer:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeNode(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			})
			_, err := c.Cluster(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestClient_UnreachableNodeNamesTheAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := NewClient(addr, wsapi.Key{})
	defer c.Close()
	if _, err := c.Cluster(context.Background()); err == nil || !strings.Contains(err.Error(), "reach node at "+addr) {
		t.Fatalf("err %v, want it to name %s", err, addr)
	}
}

// With the cluster key the client speaks TLS; a node without one answers
// plain HTTP, and the error says what to drop.
func TestClient_KeyAgainstANodeWithoutOne(t *testing.T) {
	key, err := wsapi.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), key)
	defer c.Close()
	if _, err := c.Cluster(context.Background()); err == nil || !strings.Contains(err.Error(), "drop --cluster-key-file") {
		t.Fatalf("err %v, want the hint to drop the key", err)
	}
}
