package node

import (
	"testing"

	"github.com/rbee/rbee/wsapi"
)

func TestDiscoverMode(t *testing.T) {
	key, err := wsapi.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	lan, lo := "10.0.0.5:7946", "127.0.0.1:7946"
	for _, tc := range []struct {
		name    string
		cfg     Config
		want    string
		wantErr bool
	}{
		{"auto, key, no join: mdns", Config{Discover: DiscoverAuto, Key: key, GossipAddr: lan}, DiscoverMDNS, false},
		{"auto, every interface: mdns", Config{Discover: DiscoverAuto, Key: key, GossipAddr: ":7946"}, DiscoverMDNS, false},
		{"auto beside join: off", Config{Discover: DiscoverAuto, Key: key, GossipAddr: lan, Join: []string{"10.0.0.6:7946"}}, DiscoverOff, false},
		{"auto without key: off", Config{Discover: DiscoverAuto, GossipAddr: lan}, DiscoverOff, false},
		{"auto on loopback: off", Config{Discover: DiscoverAuto, Key: key, GossipAddr: lo}, DiscoverOff, false},
		{"auto advertising loopback: off", Config{Discover: DiscoverAuto, Key: key, GossipAddr: ":7946", AdvertiseAddr: "localhost:7946"}, DiscoverOff, false},
		{"mdns beside join: mdns", Config{Discover: DiscoverMDNS, Key: key, GossipAddr: lan, Join: []string{"10.0.0.6:7946"}}, DiscoverMDNS, false},
		{"mdns without key: refused", Config{Discover: DiscoverMDNS, GossipAddr: lan}, "", true},
		{"library default: off", Config{Key: key, GossipAddr: lan}, DiscoverOff, false},
		{"off", Config{Discover: DiscoverOff, Key: key, GossipAddr: lan}, DiscoverOff, false},
		{"unknown: refused", Config{Discover: "dns-sd", Key: key, GossipAddr: lan}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.discoverMode()
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("discoverMode() = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
