package wsapi

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Traffic between nodes (sessions, proxied requests, the queen's view, the
// feed relay) runs over mutual TLS whose trust comes from the cluster key,
// with nothing to configure: every holder of the key derives the same
// certificate authority, and each process issues itself a certificate from
// it. A node takes a peer's certificate as proof that the peer holds the key,
// so no bearer secret crosses the wire between nodes.

// ClusterServerName is the TLS server name of inter-node connections: a node
// answers it with its cluster certificate and asks the caller for one.
const ClusterServerName = "rbee.cluster"

// The CA's validity is fixed so that every node derives the same
// certificate. A leaf, issued anew at every start, lives as long as the CA:
// any holder of the key can issue one, so its expiry would secure nothing,
// and a node up for longer than a shorter lifetime would be cut off from the
// cluster. Changing the key is what revokes.
var (
	caNotBefore = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	caNotAfter  = time.Date(2124, 1, 1, 0, 0, 0, 0, time.UTC)
)

// ErrNoKey is returned by NewClusterTLS for the zero key: without a key
// there is nothing to derive trust from.
var ErrNoKey = errors.New("no cluster key: inter-node traffic is not encrypted")

// ClusterTLS is one process's TLS identity in the cluster.
type ClusterTLS struct {
	ca    *x509.Certificate
	pool  *x509.CertPool
	leaf  tls.Certificate
	cache tls.ClientSessionCache
}

// NewClusterTLS derives the cluster CA from k and issues a certificate for
// name (a node or the CLI) signed by it.
func (k Key) NewClusterTLS(name string) (*ClusterTLS, error) {
	if k.IsZero() {
		return nil, ErrNoKey
	}
	ca, caKey, err := k.clusterCA()
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cluster tls: leaf key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("cluster tls: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"rbee"}},
		// Any holder of the key can issue certificates, so a name in
		// one proves nothing: the SAN only satisfies standard hostname
		// verification against ClusterServerName.
		DNSNames:    []string{ClusterServerName},
		NotBefore:   now.Add(-time.Hour), // clock skew between machines
		NotAfter:    caNotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("cluster tls: issue certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &ClusterTLS{
		ca:    ca,
		pool:  pool,
		leaf:  tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: leafKey},
		cache: tls.NewLRUClientSessionCache(256),
	}, nil
}

// clusterCA builds the cluster's CA: an Ed25519 key from the cluster key
// (HKDF, like every other derived secret) and a self-signed certificate with
// fixed fields, identical on every node (Ed25519 signatures are
// deterministic).
func (k Key) clusterCA() (*x509.Certificate, ed25519.PrivateKey, error) {
	priv := ed25519.NewKeyFromSeed(k.derive("rbee tls ca v1"))
	pub := priv.Public().(ed25519.PublicKey)
	id := sha256.Sum256(pub)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "rbee cluster CA " + hex.EncodeToString(id[:6]), Organization: []string{"rbee"}},
		NotBefore:             caNotBefore,
		NotAfter:              caNotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          id[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster tls: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster tls: CA certificate: %w", err)
	}
	return ca, priv, nil
}

// ServerConfig answers inter-node connections: it presents this process's
// certificate and requires one from the same CA.
func (c *ClusterTLS) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.leaf},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.pool,
	}
}

// ClientConfig dials another node: it checks the node's certificate against
// the cluster CA and presents this process's own.
func (c *ClusterTLS) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         ClusterServerName,
		RootCAs:            c.pool,
		Certificates:       []tls.Certificate{c.leaf},
		ClientSessionCache: c.cache,
	}
}

// IsPeer reports whether a verified TLS connection came from a holder of the
// cluster key: its certificate chains to the cluster CA.
func (c *ClusterTLS) IsPeer(cs *tls.ConnectionState) bool {
	if c == nil || cs == nil {
		return false
	}
	for _, chain := range cs.VerifiedChains {
		if len(chain) > 0 && chain[len(chain)-1].Equal(c.ca) {
			return true
		}
	}
	return false
}
