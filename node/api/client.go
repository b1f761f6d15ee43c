package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/rbee/rbee/wsapi"
)

// Client calls a running node's HTTP API, as the CLI does. With the cluster
// key it connects as the nodes do among themselves, over mutual TLS trusted
// through the key, which the admin calls require from another machine.
type Client struct {
	addr   string
	scheme string // "https" with a key
	hc     *http.Client
	ws     *http.Client // for WebSockets: no overall timeout
}

// NewClient returns a client for the node at addr (host:port). key may be zero
// when the node has none or is reached over loopback.
func NewClient(addr string, key wsapi.Key) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	scheme := "http"
	if ct, err := key.NewClusterTLS("rbee-cli"); err == nil {
		tr.TLSClientConfig = ct.ClientConfig()
		scheme = "https"
	}
	return &Client{addr: addr, scheme: scheme, hc: &http.Client{Timeout: 10 * time.Second, Transport: tr}, ws: &http.Client{Transport: tr}}
}

// Close drops the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// DialFeed opens the node's live feed (hive_telemetry and queen events).
func (c *Client) DialFeed(ctx context.Context) (*websocket.Conn, error) {
	scheme := map[string]string{"http": "ws", "https": "wss"}[c.scheme]
	u := scheme + "://" + c.addr + PathFeed
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.ws})
	if err != nil {
		return nil, fmt.Errorf("dial feed %s: %w", u, explainTLS(err, c.scheme))
	}
	return conn, nil
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.scheme+"://"+c.addr+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach node at %s: %w", c.addr, explainTLS(err, c.scheme))
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

// explainTLS says what a failed TLS handshake with a node usually means: the
// key given is not the cluster's, or the node runs without one.
func explainTLS(err error, scheme string) error {
	if scheme != "https" {
		return err
	}
	var cve *tls.CertificateVerificationError
	var re tls.RecordHeaderError
	msg := err.Error()
	switch {
	case errors.As(err, &cve), strings.Contains(msg, "tls: unknown certificate authority"), strings.Contains(msg, "tls: bad certificate"):
		return fmt.Errorf("%w (is --cluster-key-file the cluster key of this node?)", err)
	case errors.As(err, &re), strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%w (the node runs without a cluster key: drop --cluster-key-file)", err)
	}
	return err
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
	var out JoinResult
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

// Usage asks the node for the cluster's usage over the last since.
func (c *Client) Usage(ctx context.Context, since time.Duration) (*UsageView, error) {
	var v UsageView
	if err := c.do(ctx, http.MethodGet, PathUsage+"?since="+url.QueryEscape(since.String()), nil, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// CopyModel asks the node to copy model from the hives that hold it into its
// --models-dir, and calls line with each line of its answer (progress, then
// done or error) as it comes. It has no deadline of its own: ctx bounds it.
func (c *Client) CopyModel(ctx context.Context, model string, line func([]byte)) error {
	return c.modelJob(ctx, PathAdminModelCopy, map[string]string{"model": model}, "copy "+model, line)
}

// PullModel asks the node to pull ref (hf:ORG/REPO[:TAG], or a URL) into
// its --models-dir, from hub (its HF_ENDPOINT when empty) with token (its
// HF_TOKEN when empty), and calls line as CopyModel does.
func (c *Client) PullModel(ctx context.Context, ref, hub, token string, line func([]byte)) error {
	return c.modelJob(ctx, PathAdminModelPull, map[string]string{"ref": ref, "endpoint": hub, "token": token}, "pull "+ref, line)
}

// RemoveModel asks the node to delete a model of its --models-dir.
func (c *Client) RemoveModel(ctx context.Context, model string) error {
	return c.do(ctx, http.MethodDelete, PathAdminModels+"/"+url.PathEscape(model), nil, nil)
}

func (c *Client) modelJob(ctx context.Context, path string, body any, what string, line func([]byte)) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.scheme+"://"+c.addr+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.ws.Do(req)
	if err != nil {
		return fmt.Errorf("reach node at %s: %w", c.addr, explainTLS(err, c.scheme))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s: %s: %s", what, resp.Status, e.Error.Message)
		}
		return fmt.Errorf("%s: %s", what, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
