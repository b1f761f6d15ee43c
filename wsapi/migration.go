package wsapi

import (
	"fmt"
	"time"
)

// TypeMigration: entry node to queen, once per migrated stream (see
// node/proxy/migrate.go): an answer that broke off on one worker and was
// continued on another. The queen keeps the latest few and lists them in
// its queen events, so the dashboard shows them as they happen.
const TypeMigration = "migration"

// Migration results.
const (
	// MigrationContinued: the continuation was sent and its answer
	// started reaching the client.
	MigrationContinued = "continued"
	// MigrationFailed: the stream could not be continued (no worker, the
	// continuation was refused, the limit was reached); the client got
	// an error.
	MigrationFailed = "failed"
)

// MaxMigrations bounds the migrations a queen event lists.
const MaxMigrations = 20

// Migration is one stream's move from a worker that broke off its answer to
// another.
type Migration struct {
	Type string `json:"type"`
	// At is when the break was seen; Entry the node that saw it (the
	// client's), Model the model as served.
	At    time.Time `json:"at"`
	Entry string    `json:"entry"`
	Model string    `json:"model"`
	// From and To name the workers (hive/group/instance); To is empty
	// when Result is MigrationFailed before a worker was granted.
	From string `json:"from"`
	To   string `json:"to,omitempty"`
	// Tokens is how many tokens the client had when the answer broke
	// off; PauseMS how long it then waited for the next one (0 when it
	// never came).
	Tokens  int64  `json:"tokens"`
	PauseMS int64  `json:"pause_ms"`
	Result  string `json:"result"`
	// Reason says why the answer broke off, or why it was not continued.
	Reason string `json:"reason,omitempty"`
}

// Validate checks a migration report from a peer.
func (m *Migration) Validate() error {
	for _, f := range []struct {
		name, v string
		n       int
	}{{"entry", m.Entry, maxFieldLen}, {"model", m.Model, maxModelLen}, {"from", m.From, 3 * maxFieldLen},
		{"to", m.To, 3 * maxFieldLen}, {"result", m.Result, maxFieldLen}, {"reason", m.Reason, maxReasonLen}} {
		if err := checkText(f.name, f.v, f.n); err != nil {
			return err
		}
	}
	if m.Tokens < 0 || m.PauseMS < 0 {
		return fmt.Errorf("%w: negative tokens or pause", ErrInvalid)
	}
	if m.Result != MigrationContinued && m.Result != MigrationFailed {
		return fmt.Errorf("%w: result %q", ErrInvalid, truncate(m.Result, 40))
	}
	return nil
}
