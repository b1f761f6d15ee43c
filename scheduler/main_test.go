package scheduler

import (
	"flag"
	"fmt"
	"os"
	"testing"
)

// TestMain runs every test twice: as written, then with one standby grant
// per worker (Config.Standby) wherever a test leaves it unset. Granting
// ahead must keep every rule the tests check (fairness, priorities,
// affinity, caps, placement); a test that needs it off says Standby: -1.
func TestMain(m *testing.M) {
	if code := m.Run(); code != 0 {
		os.Exit(code)
	}
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		os.Exit(0) // benchmarks once
	}
	fmt.Println("scheduler: the tests again, with a standby grant per worker")
	testHookStandby = 1
	os.Exit(m.Run())
}
