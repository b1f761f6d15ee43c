package wsapi

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func mustKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKey(t *testing.T) {
	b16 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 16))
	b32 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	tests := []struct {
		name     string
		in       string
		wantErr  string
		wantRaw  int
		wantText string // String() of the parsed key
	}{
		{name: "empty", in: "", wantErr: "empty"},
		{name: "only whitespace", in: " \n\t ", wantErr: "empty"},
		{name: "not base64", in: "this is not base64!", wantErr: "not base64"},
		{name: "url-safe alphabet", in: strings.Repeat("-_", 12), wantErr: "not base64"},
		{name: "missing padding", in: strings.TrimRight(base64.StdEncoding.EncodeToString(make([]byte, 17)), "="), wantErr: "not base64"},
		{name: "too short", in: base64.StdEncoding.EncodeToString(make([]byte, 15)), wantErr: "15 bytes, need at least 16"},
		{name: "minimum length", in: b16, wantRaw: 16, wantText: b16},
		{name: "generated length", in: b32, wantRaw: 32, wantText: b32},
		{name: "whitespace trimmed", in: "  " + b32 + "\n", wantRaw: 32, wantText: b32},
		{name: "trailing newline of a key file", in: b32 + "\r\n", wantRaw: 32, wantText: b32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKey(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseKey(%q) accepted it", tt.in)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "parse cluster key: ") {
					t.Errorf("error %q, want it to start with %q and mention %q", err, "parse cluster key: ", tt.wantErr)
				}
				if !k.IsZero() {
					t.Errorf("failed parse returned a non-zero key")
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKey: %v", err)
			}
			if len(k.raw) != tt.wantRaw {
				t.Errorf("key has %d bytes, want %d", len(k.raw), tt.wantRaw)
			}
			if k.String() != tt.wantText {
				t.Errorf("String() = %q, want %q", k.String(), tt.wantText)
			}
		})
	}
}

func TestGenerateKey_RoundTripsThroughString(t *testing.T) {
	k := mustKey(t)
	if k.IsZero() || len(k.raw) != KeySize {
		t.Fatalf("generated key has %d bytes, want %d", len(k.raw), KeySize)
	}
	p, err := ParseKey(k.String())
	if err != nil {
		t.Fatalf("ParseKey(String()): %v", err)
	}
	if !bytes.Equal(p.raw, k.raw) {
		t.Fatal("parsed key differs from the generated one")
	}
	if !bytes.Equal(p.GossipSecret(), k.GossipSecret()) || p.HTTPToken() != k.HTTPToken() {
		t.Error("parsed key derives different secrets")
	}
	if k2 := mustKey(t); bytes.Equal(k2.raw, k.raw) {
		t.Error("two generated keys are equal")
	}
}

func TestKey_DerivationsAreDistinctAndDeterministic(t *testing.T) {
	k := mustKey(t)
	gossip := k.GossipSecret()
	if len(gossip) != 32 {
		t.Errorf("gossip secret is %d bytes, want 32 (AES-256)", len(gossip))
	}
	token := k.HTTPToken()
	tok, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		t.Fatalf("HTTP token is not raw URL base64: %v", err)
	}
	session := k.derive("rbee session v1")
	derived := map[string][]byte{"gossip": gossip, "http": tok, "session": session}
	for a, va := range derived {
		if bytes.Equal(va, k.raw) {
			t.Errorf("%s secret equals the raw key", a)
		}
		for b, vb := range derived {
			if a < b && bytes.Equal(va, vb) {
				t.Errorf("%s and %s secrets are equal", a, b)
			}
		}
	}
	if !bytes.Equal(k.GossipSecret(), gossip) || k.HTTPToken() != token {
		t.Error("derivation is not deterministic")
	}
	other := mustKey(t)
	if bytes.Equal(other.GossipSecret(), gossip) || other.HTTPToken() == token {
		t.Error("different keys derive the same secrets")
	}
}

func TestKey_CheckToken(t *testing.T) {
	k := mustKey(t)
	tok := k.HTTPToken()
	for _, tt := range []struct {
		name string
		tok  string
		want bool
	}{
		{"right token", tok, true},
		{"empty", "", false},
		{"prefix", tok[:len(tok)-1], false},
		{"extra byte", tok + "A", false},
		{"one byte changed", flipFirst(tok), false},
		{"other key's token", mustKey(t).HTTPToken(), false},
		{"the raw key itself", k.String(), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := k.CheckToken(tt.tok); got != tt.want {
				t.Errorf("CheckToken(%q) = %v, want %v", tt.tok, got, tt.want)
			}
		})
	}
}

func flipFirst(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

func TestKey_ZeroKeyHasNoSecrets(t *testing.T) {
	var k Key
	if !k.IsZero() {
		t.Fatal("zero Key is not IsZero")
	}
	if s := k.GossipSecret(); s != nil {
		t.Errorf("GossipSecret = %x, want nil", s)
	}
	if tok := k.HTTPToken(); tok != "" {
		t.Errorf("HTTPToken = %q, want empty", tok)
	}
	for _, tok := range []string{"", "anything"} {
		if k.CheckToken(tok) {
			t.Errorf("zero key accepted token %q", tok)
		}
	}
	if k.String() != "" {
		t.Errorf("String() = %q", k.String())
	}
}

func TestKey_ProofBindsRoleNoncesAndName(t *testing.T) {
	k := mustKey(t)
	base := k.proof("hive", "sn", "cn", "hive-1")
	if !k.checkProof(base, "hive", "sn", "cn", "hive-1") {
		t.Fatal("checkProof rejects a correct proof")
	}
	for _, tt := range []struct {
		name                    string
		key                     Key
		role, sn, cn, peer, got string
	}{
		{"queen role", k, "queen", "sn", "cn", "hive-1", base},
		{"other server nonce", k, "hive", "sn2", "cn", "hive-1", base},
		{"other client nonce", k, "hive", "sn", "cn2", "hive-1", base},
		{"other name", k, "hive", "sn", "cn", "hive-2", base},
		{"fields shifted across the separator", k, "hive", "s", "ncn", "hive-1", base},
		{"other key", mustKey(t), "hive", "sn", "cn", "hive-1", base},
		{"empty proof", k, "hive", "sn", "cn", "hive-1", ""},
		{"uppercase hex", k, "hive", "sn", "cn", "hive-1", strings.ToUpper(base)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.key.checkProof(tt.got, tt.role, tt.sn, tt.cn, tt.peer) {
				t.Error("checkProof accepted a proof made for something else")
			}
		})
	}
}
