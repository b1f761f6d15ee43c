package tracing

import (
	"testing"

	"go.uber.org/goleak"
)

// The provider's batcher and the exporter's connections must end with
// Shutdown.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
