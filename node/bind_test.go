package node

import "testing"

// TestLoopbackOnly_AddressSpellings: without a cluster key a node may only
// listen on loopback, so every way of writing a bind address must be judged
// by what it really binds.
func TestLoopbackOnly_AddressSpellings(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		want    bool
		wantErr bool
	}{
		{"127.0.0.1:7833", true, false},
		{"127.0.0.2:7833", true, false},
		{"[::1]:7833", true, false},
		{"localhost:7833", true, false},
		{"localhost:0", true, false},
		{"0.0.0.0:7833", false, false},
		{"[::]:7833", false, false},
		{":7833", false, false},
		{"10.1.2.3:7833", false, false},
		{"[fe80::1]:7833", false, false},
		{"no-such-host.invalid:7833", false, true},
		{"::1", false, true},       // no port
		{"127.0.0.1", false, true}, // no port
	} {
		got, err := loopbackOnly(tc.addr)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("loopbackOnly(%q) = %v, %v; want %v, error %v", tc.addr, got, err, tc.want, tc.wantErr)
		}
	}
}
