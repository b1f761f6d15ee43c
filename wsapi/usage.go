package wsapi

import (
	"fmt"
	"time"
)

// Usage accounting travels on the node's session too: every node counts the
// tokens of the requests it was entry node for, in ten-minute buckets, and
// sends the queen the buckets that changed (all of them on a new session).
// A bucket carries its cumulative figures, not a delta, so the queen stores
// the latest copy of each and a bucket sent twice (to a new queen after a
// failover, say) is never counted twice.

// TypeUsageReport: node to queen, every few seconds while it served requests.
const TypeUsageReport = "usage_report"

// Limits on a usage report. A report with more buckets is sent as several
// messages: each bucket stands alone, so they need not arrive together.
const (
	// MaxUsageBuckets keeps a report under 1 MiB (a bucket is about 200
	// bytes of JSON), half the session's read limit.
	MaxUsageBuckets = 4096
	// UsageWaitBins is the length of a bucket's queue-wait histogram
	// (see node/usage for the bins).
	UsageWaitBins = 21
	// UsageBucketSeconds is a bucket's span.
	UsageBucketSeconds = 600
)

// UsageWindow is how far back usage reaches: nodes keep their buckets this
// long, and GET /v1/usage answers a longer since for this long.
const UsageWindow = 24 * time.Hour

// UsageReport is some of a node's usage buckets.
type UsageReport struct {
	Type string `json:"type"`
	// Started is the reporting node's start: a node that restarted
	// counts from zero again, and the queen keeps its earlier buckets
	// apart rather than overwriting them.
	Started time.Time     `json:"started"`
	Buckets []UsageBucket `json:"buckets"`
}

// UsageBucket is what one API key did with one model in one ten-minute span,
// counted by the entry node.
type UsageBucket struct {
	// Start is the span's start, Unix seconds, a multiple of
	// UsageBucketSeconds.
	Start int64 `json:"start"`
	// Key is the API key's name ("-" without one), never the key.
	Key              string `json:"key"`
	Model            string `json:"model"`
	Requests         int64  `json:"requests"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	// Migrated is an addition (omitted when 0): the requests whose answer
	// was continued on another worker after its worker broke off.
	Migrated int64 `json:"migrated,omitempty"`
	// Wait counts the requests by how long they waited for a lease, in
	// log-scale bins (omitted when all are empty).
	Wait []int64 `json:"wait,omitempty"`
}

// Validate checks a usage report from a peer.
func (m *UsageReport) Validate() error {
	if len(m.Buckets) > MaxUsageBuckets {
		return fmt.Errorf("%w: %d usage buckets, at most %d", ErrInvalid, len(m.Buckets), MaxUsageBuckets)
	}
	for i := range m.Buckets {
		if err := m.Buckets[i].validate(); err != nil {
			return fmt.Errorf("usage bucket %d: %w", i, err)
		}
	}
	return nil
}

func (b *UsageBucket) validate() error {
	if b.Start <= 0 || b.Start%UsageBucketSeconds != 0 {
		return fmt.Errorf("%w: start %d is not a positive multiple of %d", ErrInvalid, b.Start, UsageBucketSeconds)
	}
	if err := checkText("key", b.Key, maxFieldLen); err != nil || b.Key == "" {
		return fmt.Errorf("%w: key must be 1-%d bytes of text", ErrInvalid, maxFieldLen)
	}
	if err := checkText("model", b.Model, maxModelLen); err != nil || b.Model == "" {
		return fmt.Errorf("%w: model must be 1-%d bytes of text", ErrInvalid, maxModelLen)
	}
	if b.Requests < 0 || b.PromptTokens < 0 || b.CompletionTokens < 0 || b.Migrated < 0 || b.Migrated > b.Requests {
		return fmt.Errorf("%w: negative count", ErrInvalid)
	}
	if len(b.Wait) > UsageWaitBins {
		return fmt.Errorf("%w: %d wait bins, at most %d", ErrInvalid, len(b.Wait), UsageWaitBins)
	}
	for _, n := range b.Wait {
		if n < 0 {
			return fmt.Errorf("%w: negative wait count", ErrInvalid)
		}
	}
	return nil
}

// UsageRow is one API key's use of one model over a span: a row of GET
// /v1/usage, summed by the queen from every node's buckets.
type UsageRow struct {
	Key              string `json:"key"`
	Model            string `json:"model"`
	Requests         int64  `json:"requests"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	// Migrated: the requests whose answer was continued on another
	// worker (omitted when 0).
	Migrated int64 `json:"migrated,omitempty"`
	// The queue-wait percentiles are estimates from log-scale bins
	// (within ±41%; see node/usage), rounded to 0.1 ms.
	QueueWaitP50MS float64 `json:"queue_wait_p50_ms"`
	QueueWaitP99MS float64 `json:"queue_wait_p99_ms"`
}
