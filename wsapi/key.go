package wsapi

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the length of a cluster key made by GenerateKey.
const KeySize = 32

// minKeySize keeps hand-made keys from being guessable; 16 bytes is also the
// smallest AES key memberlist accepts.
const minKeySize = 16

// Key is the cluster key. Nothing sends it on the wire: gossip, sessions and
// HTTP each use their own key derived with HKDF, so a leaked HTTP token does
// not decrypt gossip.
type Key struct {
	raw []byte
}

// GenerateKey returns a new random cluster key.
func GenerateKey() (Key, error) {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	return Key{raw: b}, nil
}

// ParseKey reads a key as `rbee keygen` prints it: standard base64, surrounding
// whitespace ignored.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Key{}, errors.New("parse cluster key: empty")
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("parse cluster key: not base64 (make one with `rbee keygen`): %w", err)
	}
	if len(b) < minKeySize {
		return Key{}, fmt.Errorf("parse cluster key: %d bytes, need at least %d", len(b), minKeySize)
	}
	return Key{raw: b}, nil
}

// IsZero reports whether no key is set (insecure mode).
func (k Key) IsZero() bool { return len(k.raw) == 0 }

// String returns the key in the form ParseKey reads.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k.raw) }

func (k Key) derive(info string) []byte {
	out, err := hkdf.Key(sha256.New, k.raw, nil, info, 32)
	if err != nil {
		// hkdf.Key fails only for lengths over 255*32 bytes.
		panic(err)
	}
	return out
}

// GossipSecret is the AES-256 key for memberlist's encryption.
func (k Key) GossipSecret() []byte {
	if k.IsZero() {
		return nil
	}
	return k.derive("rbee gossip v1")
}

// HTTPToken is the bearer token for the HTTP and feed APIs. Users never type
// it: the CLI derives it from the key file.
func (k Key) HTTPToken() string {
	if k.IsZero() {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(k.derive("rbee http token v1"))
}

// CheckToken compares a presented bearer token in constant time.
func (k Key) CheckToken(tok string) bool {
	want := k.HTTPToken()
	return want != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(want)) == 1
}

// proof is the session handshake MAC. role separates the hive's proof from the
// queen's so one cannot be reflected back as the other.
func (k Key) proof(role, serverNonce, clientNonce, name string) string {
	m := hmac.New(sha256.New, k.derive("rbee session v1"))
	for _, s := range []string{role, serverNonce, clientNonce, name} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

func (k Key) checkProof(got, role, serverNonce, clientNonce, name string) bool {
	want := k.proof(role, serverNonce, clientNonce, name)
	return hmac.Equal([]byte(got), []byte(want))
}

func newNonce() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}
