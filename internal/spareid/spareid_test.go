package spareid

import "testing"

func TestLease(t *testing.T) {
	for _, tc := range []struct {
		id, lease string
		ok        bool
	}{
		{Use("q1-7", 0), "q1-7", true},
		{Use("q1-7", 35), "q1-7", true},
		{"q1-7/z", "q1-7", true},
		{"q1-7", "", false}, // a lease, not a use
		{"/3", "", false},
		{"q1-7/", "", false},
		{"", "", false},
	} {
		lease, ok := Lease(tc.id)
		if lease != tc.lease || ok != tc.ok {
			t.Errorf("Lease(%q) = %q, %v; want %q, %v", tc.id, lease, ok, tc.lease, tc.ok)
		}
	}
	if got := Use("q1-7", 36); got != "q1-7/10" {
		t.Errorf("Use(q1-7, 36) = %q, want q1-7/10", got)
	}
}
