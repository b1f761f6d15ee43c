package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/rbee/rbee/node/tenants"
	"github.com/rbee/rbee/wsapi"
)

// admission is a request the entry node has agreed to serve: everything the
// retry loop needs to ask for leases and forward, read once from the body
// and the request before the first lease is asked for.
type admission struct {
	start time.Time // when the request reached this node
	body  []byte    // as forwarded: with include_usage when askUsage added it
	// clientBody is the body as the client sent it, for a peer that
	// serves the request instead of this node (peers.go).
	clientBody []byte
	release    func() // gives the body's bytes back to the node's budget
	model      string // as the client asked for it
	tenant     *tenants.Tenant
	// stream: the client asked for a stream (only a JSON true counts),
	// so the wait for a lease is kept alive (keepalive.go).
	stream bool
	// stripUsage: the usage chunk rbee asked for is not the client's.
	stripUsage bool
	// previousID is the Responses follow-up's previous_response_id, and
	// on the worker that made it when this node remembers it.
	previousID string
	on         Placement
	conv       string // the conversation, for prefix affinity
	firstTurn  bool   // and the request is its first turn
}

// admit decides whether and how the entry node may serve r: its body fits
// the node's budget, names a valid model and one the API key may use. On
// false the client has had its answer and nothing is held; on true the
// caller must call a.release once the body is no longer needed.
func (p *Proxy) admit(w http.ResponseWriter, r *http.Request) (a admission, ok bool) {
	a.start = time.Now()
	body, release, berr := p.readBody(w, r, bodyHolder(r))
	if berr != nil {
		if berr.status == http.StatusServiceUnavailable || berr.status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		p.Fail(w, r, "", berr.status, berr.typ, berr.msg)
		return a, false
	}
	defer func() {
		if !ok {
			release() // after the answer, as when the handler returns
		}
	}()
	head, err := readHead(r.Header.Get("Content-Type"), body)
	var pe *ParamError
	switch {
	case errors.As(err, &pe):
		p.metrics.requests.WithLabelValues(keyLabel(r), "", "400").Inc()
		WriteParamError(w, http.StatusBadRequest, "invalid_request_error", pe.Msg, pe.Param)
		return a, false
	case err != nil:
		p.Fail(w, r, "", http.StatusBadRequest, "invalid_request_error", err.Error())
		return a, false
	}
	if head.Model == "" {
		p.metrics.requests.WithLabelValues(keyLabel(r), "", "400").Inc()
		WriteParamError(w, http.StatusBadRequest, "invalid_request_error", `"model" is required`, "model")
		return a, false
	}
	if err := wsapi.ValidModel(head.Model); err != nil {
		p.metrics.requests.WithLabelValues(keyLabel(r), "", "400").Inc()
		WriteParamError(w, http.StatusBadRequest, "invalid_request_error", `"model": `+strings.TrimPrefix(err.Error(), "invalid value: "), "model")
		return a, false
	}
	a.model, a.tenant = head.Model, tenantOf(r)
	if !a.tenant.Allows(a.model) {
		p.Fail(w, r, p.labels.of(a.model), http.StatusForbidden, "model_not_allowed", fmt.Sprintf("key %s may not use model %q (its models: %s)",
			a.tenant.Name, TruncateText(a.model, 200), strings.Join(a.tenant.Models, ", ")))
		return a, false
	}
	a.release, a.stream = release, head.Stream == true
	// Usage accounting (usage.go): a stream is asked for its usage.
	a.clientBody = body
	a.body, a.stripUsage = askUsage(r.URL.Path, &head, body)
	a.previousID, a.on = head.PreviousResponseID, p.previousWorker(head.PreviousResponseID)
	a.conv, a.firstTurn = conversationOf(r, &head, a.tenant.Scope())
	return a, true
}

// previousWorker is the worker that made response id, when this entry node
// passed that response on and still remembers it; else the zero Placement
// (any worker).
func (p *Proxy) previousWorker(id string) Placement {
	if id == "" {
		return Placement{}
	}
	on, ok := p.responses.get(id, time.Now())
	if !ok {
		p.log.Debug("previous_response_id unknown to this entry node; any worker serves the follow-up", "previous_response_id", TruncateText(id, 100))
	}
	return on
}
