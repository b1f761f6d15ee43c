package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Client calls a running node's HTTP API, as the CLI does.
type Client struct {
	addr string
	key  wsapi.Key
	hc   *http.Client
}

// NewClient returns a client for the node at addr (host:port). key may be zero
// when the node has none or is reached over loopback.
func NewClient(addr string, key wsapi.Key) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &Client{addr: addr, key: key, hc: &http.Client{Timeout: 10 * time.Second, Transport: tr}}
}

// Close drops the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.addr+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok := c.key.HTTPToken(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach node at %s: %w", c.addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.Error.Message)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Members lists the cluster as the node sees it.
func (c *Client) Members(ctx context.Context) ([]MemberView, error) {
	var ms []MemberView
	err := c.do(ctx, http.MethodGet, PathAdminMembers, nil, &ms)
	return ms, err
}

// Cluster returns the node's /v1/cluster document.
func (c *Client) Cluster(ctx context.Context) (*ClusterView, error) {
	var v ClusterView
	if err := c.do(ctx, http.MethodGet, PathCluster, nil, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// Join asks the node to join the cluster at addrs and returns how many
// answered.
func (c *Client) Join(ctx context.Context, addrs []string) (int, error) {
	var out struct {
		Joined int `json:"joined"`
	}
	err := c.do(ctx, http.MethodPost, PathAdminJoin, JoinRequest{Addrs: addrs}, &out)
	return out.Joined, err
}

// Leave asks the node to leave the cluster gracefully and stop, letting
// requests in flight finish for up to drain.
func (c *Client) Leave(ctx context.Context, drain time.Duration) error {
	return c.do(ctx, http.MethodPost, PathAdminLeave, LeaveRequest{DrainMS: drain.Milliseconds()}, nil)
}

// RegisterWorker tells the node about a worker `rbee worker run` started.
func (c *Client) RegisterWorker(ctx context.Context, reg WorkerRegistration) error {
	return c.do(ctx, http.MethodPost, PathAdminWorkers, reg, nil)
}
