package node

// POST /v1/hive-heartbeat: the seed's hives push their telemetry to the queen
// over plain HTTP instead of keeping an rbee session. Any node takes the
// post; one that is not queen forwards it to the queen over the cluster's
// TLS, so such a hive may post to the rbee node on its own machine.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/proxy"
	"github.com/rbee/rbee/node/queen"
	"github.com/rbee/rbee/wsapi"
)

// forwardedHeader marks a heartbeat a node forwarded to the node it takes
// for queen: that node answers it itself rather than forwarding it again, so
// two nodes that disagree on the queen for a moment cannot bounce it.
const forwardedHeader = "X-Rbee-Forwarded"

// heartbeatForwardTimeout bounds a forwarded heartbeat: the hive posts again
// within a second, so a late answer is worth nothing.
const heartbeatForwardTimeout = 5 * time.Second

// hiveHeartbeat is a heartbeat body in either of the seeds' shapes: their
// hive's HiveHeartbeat ({"hive":{"id":...},"timestamp","workers"}, whose
// hive object carries more that rbee does not need) or the queen's
// hive_telemetry event ({"type":"hive_telemetry","hive_id",...}).
type hiveHeartbeat struct {
	wsapi.HiveTelemetry `json:",inline"`
	Hive                *struct {
		ID string `json:"id"`
	} `json:"hive"`
}

// decodeHeartbeat parses and validates a heartbeat body with the rules of a
// session's telemetry (wsapi.Decode: JSON v2, exact names, no duplicate
// names, valid UTF-8; unknown names ignored; then Validate). A missing
// timestamp is now.
func decodeHeartbeat(body []byte, now time.Time) (*wsapi.HiveTelemetry, error) {
	var hb hiveHeartbeat
	if err := jsonv2.Unmarshal(body, &hb); err != nil {
		return nil, fmt.Errorf("%w: %s", wsapi.ErrMalformed, proxy.TruncateText(err.Error(), 200))
	}
	t := &hb.HiveTelemetry
	if t.Type != "" && t.Type != wsapi.TypeHiveTelemetry {
		return nil, fmt.Errorf("%w: type %q: a heartbeat is hive_telemetry", wsapi.ErrUnknownType, proxy.TruncateText(t.Type, 40))
	}
	if hb.Hive != nil {
		switch {
		case t.HiveID == "":
			t.HiveID = hb.Hive.ID
		case hb.Hive.ID != "" && hb.Hive.ID != t.HiveID:
			return nil, fmt.Errorf("%w: hive_id %q and hive.id %q differ", wsapi.ErrInvalid,
				proxy.TruncateText(t.HiveID, 40), proxy.TruncateText(hb.Hive.ID, 40))
		}
	}
	if t.HiveID == "" {
		return nil, fmt.Errorf("%w: the hive is named by hive_id (or hive.id)", wsapi.ErrInvalid)
	}
	if err := wsapi.ValidName(t.HiveID); err != nil {
		return nil, fmt.Errorf("hive_id: %w", err)
	}
	if err := t.Validate(t.HiveID); err != nil {
		return nil, err
	}
	t.Type = wsapi.TypeHiveTelemetry
	if t.Workers == nil {
		t.Workers = []wsapi.ProcessStats{} // the feed's readers expect a list
	}
	if t.Timestamp.IsZero() {
		t.Timestamp = now.UTC()
	}
	return t, nil
}

func (n *Node) handleHiveHeartbeat(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wsapi.DefaultReadLimit))
	if err != nil {
		if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
			proxy.WriteError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", fmt.Sprintf("heartbeat larger than %d bytes", mbe.Limit))
			return
		}
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "read body: "+err.Error())
		return
	}
	now := time.Now()
	t, err := decodeHeartbeat(body, now)
	if err != nil {
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "heartbeat: "+err.Error())
		return
	}
	if q, ok := n.Queen(); ok && q.Name != n.cfg.Name && r.Header.Get(forwardedHeader) == "" {
		n.forwardHeartbeat(r.Context(), w, q.Name, q.HTTPAddr, body)
		return
	}
	err = n.queen.Ingest(t, now)
	switch {
	case err == nil:
		proxy.WriteJSON(w, api.HeartbeatAccepted{Accepted: true, HiveID: t.HiveID, Queen: n.cfg.Name})
	case errors.Is(err, queen.ErrNotQueen):
		// No queen, or (forwarded here) another one: say which.
		q, ok := n.Queen()
		if !ok || q.Name == n.cfg.Name {
			proxy.WriteError(w, http.StatusServiceUnavailable, "no_queen", "no queen elected yet: post again")
			return
		}
		proxy.WriteError(w, http.StatusMisdirectedRequest, "not_queen", fmt.Sprintf("not queen: queen is %s at %s", q.Name, q.HTTPAddr))
	case errors.Is(err, queen.ErrHiveIsNode):
		proxy.WriteError(w, http.StatusConflict, "hive_is_node", err.Error())
	default:
		proxy.WriteError(w, http.StatusBadRequest, "invalid_request_error", "heartbeat: "+err.Error())
	}
}

// forwardHeartbeat posts body to the queen at addr over the cluster's TLS and
// relays its answer.
func (n *Node) forwardHeartbeat(ctx context.Context, w http.ResponseWriter, name, addr string, body []byte) {
	ctx, cancel := context.WithTimeout(ctx, heartbeatForwardTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url(addr, api.PathHiveHeartbeat, false), bytes.NewReader(body))
	if err != nil {
		proxy.WriteError(w, http.StatusInternalServerError, "internal_error", err.Error())
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(forwardedHeader, n.cfg.Name)
	resp, err := n.hc.Do(req)
	if err != nil {
		proxy.WriteError(w, http.StatusBadGateway, "queen_unreachable", fmt.Sprintf("forward heartbeat to queen %s: %v", name, err))
		return
	}
	defer resp.Body.Close()
	// The queen's answer is a small JSON document; more is not its.
	ans, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminBody))
	if err != nil {
		proxy.WriteError(w, http.StatusBadGateway, "queen_unreachable", fmt.Sprintf("forward heartbeat to queen %s: %v", name, err))
		return
	}
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(ans)
}
