package wsapi

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
)

// Every holder of the key derives the same CA, so certificates issued by
// different processes trust each other; another key's do not.
func TestClusterTLS_SameKeySameCAOtherKeyRefused(t *testing.T) {
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	ca1, _, err := k1.clusterCA()
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := k1.clusterCA()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca1.Raw, again.Raw) {
		t.Fatal("the CA differs between two derivations from one key")
	}
	a, err := k1.NewClusterTLS("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := k1.NewClusterTLS("b")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := k2.NewClusterTLS("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (Key{}).NewClusterTLS("z"); err != ErrNoKey {
		t.Fatalf("zero key: %v, want ErrNoKey", err)
	}
	for _, tc := range []struct {
		name   string
		client *ClusterTLS
		ok     bool
	}{{"same key", b, true}, {"other key", stranger, false}} {
		t.Run(tc.name, func(t *testing.T) {
			srvErr, cliErr, peer := handshake(t, a, tc.client)
			if ok := srvErr == nil && cliErr == nil; ok != tc.ok {
				t.Fatalf("server %v, client %v; want ok=%v", srvErr, cliErr, tc.ok)
			}
			if peer != tc.ok {
				t.Fatalf("IsPeer = %v, want %v", peer, tc.ok)
			}
		})
	}
}

// A client with no certificate at all is refused by the cluster side.
func TestClusterTLS_ClientWithoutCertificateRefused(t *testing.T) {
	k, _ := GenerateKey()
	a, _ := k.NewClusterTLS("a")
	cfg := a.ClientConfig()
	cfg.Certificates = nil
	srvErr, _, _ := handshakeWith(t, a.ServerConfig(), cfg, a)
	if srvErr == nil {
		t.Fatal("server accepted a client without a certificate")
	}
}

func handshake(t *testing.T, server, client *ClusterTLS) (srvErr, cliErr error, peer bool) {
	return handshakeWith(t, server.ServerConfig(), client.ClientConfig(), server)
}

func handshakeWith(t *testing.T, scfg, ccfg *tls.Config, server *ClusterTLS) (srvErr, cliErr error, peer bool) {
	t.Helper()
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := tls.Server(c1, scfg)
		srvErr = s.Handshake()
		if srvErr == nil {
			cs := s.ConnectionState()
			peer = server.IsPeer(&cs)
			_, _ = io.WriteString(s, "ok")
		}
		s.Close()
	}()
	c := tls.Client(c2, ccfg)
	cliErr = c.Handshake()
	if cliErr == nil {
		_, cliErr = io.ReadAll(c)
	}
	c.Close()
	<-done
	return srvErr, cliErr, peer
}
