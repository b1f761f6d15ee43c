package gossip

import (
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func TestMeta_RoundTrip(t *testing.T) {
	in := Meta{
		HTTPAddr: "127.0.0.1:8080",
		Roles:    []string{RoleQueen, RoleHive},
		Priority: -3,
		Start:    t0,
		Version:  "1.2.3",
		Claim:    true,
		Term:     42,
		Follows:  "queen-a",
		Leaving:  true,
	}
	b, err := in.encode()
	if err != nil {
		t.Fatal(err)
	}
	out, err := decodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if out.HTTPAddr != in.HTTPAddr || strings.Join(out.Roles, ",") != "queen,hive" || out.Priority != in.Priority ||
		!out.Start.Equal(in.Start) || out.Version != in.Version || !out.Claim || !out.Leaving || out.Term != 42 || out.Follows != "queen-a" {
		t.Fatalf("decoded %+v, want %+v", out, in)
	}
}

func TestMeta_EncodeRejectsOversize(t *testing.T) {
	_, err := Meta{HTTPAddr: strings.Repeat("x", memberlist.MetaMaxSize)}.encode()
	if err == nil || !strings.Contains(err.Error(), "512") {
		t.Fatalf("encode oversize meta: err = %v, want one naming the 512-byte limit", err)
	}
}

func TestMemberFrom(t *testing.T) {
	enc := func(m Meta) []byte {
		t.Helper()
		b, err := m.encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	base := Meta{HTTPAddr: "127.0.0.1:8080", Roles: []string{RoleQueen}, Priority: 2, Start: t0, Version: "v1"}
	leavingMeta := base
	leavingMeta.Leaving = true

	for _, tc := range []struct {
		name     string
		meta     []byte
		status   Status
		want     Status
		eligible bool
	}{
		{"alive member is alive and eligible", enc(base), StatusAlive, StatusAlive, true},
		{"failure without a leave announcement is failed", enc(base), StatusFailed, StatusFailed, false},
		{"failure after a leave announcement is left", enc(leavingMeta), StatusFailed, StatusLeft, false},
		{"alive but leaving stays alive and is not eligible", enc(leavingMeta), StatusAlive, StatusAlive, false},
		{"undecodable metadata is listed but never eligible", []byte("\x00not json"), StatusAlive, StatusAlive, false},
		{"no metadata is listed but never eligible", nil, StatusAlive, StatusAlive, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &memberlist.Node{Name: "a", Addr: []byte{127, 0, 0, 1}, Port: 7946, Meta: tc.meta}
			m := memberFrom(n, tc.status)
			if m.Name != "a" || m.GossipAddr != "127.0.0.1:7946" {
				t.Errorf("name %q addr %q, want a 127.0.0.1:7946", m.Name, m.GossipAddr)
			}
			if m.Status != tc.want {
				t.Errorf("status %q, want %q", m.Status, tc.want)
			}
			_, elected := Elect([]Member{m})
			if elected != tc.eligible {
				t.Errorf("eligible = %v, want %v (member %+v)", elected, tc.eligible, m)
			}
			if tc.eligible && (m.HTTPAddr != base.HTTPAddr || m.Priority != base.Priority || !m.Start.Equal(t0) || m.Version != "v1") {
				t.Errorf("member %+v does not carry meta %+v", m, base)
			}
		})
	}
}

// A peer's revision travels in its metadata; a build before revisions sends
// none (revision 0), and keys a later build adds are ignored, so nodes of
// mixed builds keep electing one queen.
func TestMeta_RevisionAcrossBuilds(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta string
		want int
	}{
		{"this build", `{"h":"127.0.0.1:8080","r":["queen"],"p":0,"s":"2025-10-30T20:15:30Z","v":"0.2.0","w":1}`, 1},
		{"a build before revisions (d2f4061)", `{"h":"127.0.0.1:8080","r":["queen"],"p":0,"s":"2025-10-30T20:15:30Z","v":"0.1.0"}`, 0},
		{"a later build with keys unknown here", `{"h":"127.0.0.1:8080","r":["queen"],"p":0,"s":"2025-10-30T20:15:30Z","v":"9.0.0","w":9,"zz":{"x":[1]}}`, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &memberlist.Node{Name: "a", Addr: []byte{127, 0, 0, 1}, Port: 7946, Meta: []byte(tc.meta)}
			m := memberFrom(n, StatusAlive)
			if m.Revision != tc.want {
				t.Errorf("revision %d, want %d", m.Revision, tc.want)
			}
			if q, ok := Elect([]Member{m}); !ok || q.Name != "a" {
				t.Errorf("Elect = %q, %v: a member of another build is not eligible", q.Name, ok)
			}
		})
	}
	b, err := Meta{Version: "0.2.0", Revision: 1}.encode()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"w":1`) {
		t.Errorf("encoded metadata %s carries no revision", b)
	}
}
