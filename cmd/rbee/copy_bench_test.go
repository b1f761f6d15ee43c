package main

// Model copies between hives over the network: the file endpoints a hive
// serves its peers (/v1/hive/files) read by the copier, each node a real
// process in its own network namespace.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/netlab"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
	"github.com/rbee/rbee/node/hive/transfer"
	"github.com/rbee/rbee/wsapi"
)

// writeModel writes a size-byte pseudo-random file as dir/name.gguf: the
// catalog lists it (a GGUF by name), though no engine could run it.
func writeModel(tb testing.TB, dir, name string, size int64) string {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(dir, name+".gguf")
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(7, 7))
	buf := make([]byte, 1<<20)
	copy(buf, "GGUF")
	for left := size; left > 0; left -= int64(len(buf)) {
		for i := 4; i < len(buf); i += 8 {
			v := r.Uint64()
			for j := 0; j < 8 && i+j < len(buf); j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), left)]); err != nil {
			tb.Fatal(err)
		}
	}
	return p
}

// clusterClient is an HTTP client holding the cluster's TLS identity, as
// a hive that copies has; curlTLS writes the same identity for curl.
func clusterClient(tb testing.TB, key wsapi.Key) (*http.Client, []string) {
	tb.Helper()
	ct, err := key.NewClusterTLS("copier")
	if err != nil {
		tb.Fatal(err)
	}
	cfg := ct.ClientConfig()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	dir := tb.TempDir()
	cert := cfg.Certificates[0]
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[len(cert.Certificate)-1]})
	for name, b := range map[string][]byte{"cert.pem": chain, "key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), "ca.pem": ca} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	curlArgs := []string{"-s", "--fail", "--cert", filepath.Join(dir, "cert.pem"), "--key", filepath.Join(dir, "key.pem"),
		"--cacert", filepath.Join(dir, "ca.pem")}
	return &http.Client{Transport: tr}, curlArgs
}

// BenchmarkModelCopy copies a 512 MiB model over veth links (network
// namespaces, as root) from one hive and from two, beside curl fetching the
// same file from one of them over the same TLS in the same run, and reports
// MB/s of each and the copy's share of curl's. It also checks that a copy
// whose peer is cut off mid-way resumes, fetching again < 1% of the file.
func BenchmarkModelCopy(b *testing.B) {
	const size = 512 << 20
	nc := newNetCluster(b)
	ha, hb, hc := nc.host("a"), nc.host("b"), nc.host("c")
	a := nc.node(ha, "")
	var peers []string
	for _, h := range []*netlab.Host{hb, hc} {
		dir := filepath.Join(b.TempDir(), "models")
		writeModel(b, dir, "big", size)
		nc.node(h, a.gossipAddr, "--models-dir", dir)
		peers = append(peers, "https://"+h.Addr(netHTTPPort))
	}
	client, curlArgs := clusterClient(b, nc.key)
	// The first listing hashes the file; the runs measure the copy.
	for _, p := range peers {
		if _, err := transfer.Copy(context.Background(), "big", b.TempDir(), transfer.Options{Client: client, Peers: []string{p}}); err != nil {
			b.Fatal(err)
		}
	}
	server := wsapi.ClusterServerName
	host := strings.TrimPrefix(peers[0], "https://")
	url := fmt.Sprintf("https://%s:%d%s/big/big.gguf", server, netHTTPPort, api.PathHiveFiles)
	resolve := fmt.Sprintf("%s:%d:%s", server, netHTTPPort, strings.Split(host, ":")[0])
	var curlMBs float64
	if curl, err := exec.LookPath("curl"); err == nil {
		out := filepath.Join(b.TempDir(), "curl.out")
		start := time.Now()
		if o, err := exec.Command(curl, append(curlArgs, "--resolve", resolve, "-o", out, url)...).CombinedOutput(); err != nil {
			b.Fatalf("curl: %v: %s", err, o)
		}
		curlMBs = size / 1e6 / time.Since(start).Seconds()
		b.ReportMetric(curlMBs, "curl-MB/s")
	}
	for _, ps := range [][]string{peers[:1], peers} {
		dir := b.TempDir()
		start := time.Now()
		if _, err := transfer.Copy(context.Background(), "big", dir, transfer.Options{Client: client, Peers: ps}); err != nil {
			b.Fatal(err)
		}
		mbs := size / 1e6 / time.Since(start).Seconds()
		b.ReportMetric(mbs, fmt.Sprintf("copy-%dpeer-MB/s", len(ps)))
		if curlMBs > 0 {
			b.ReportMetric(100*mbs/curlMBs, fmt.Sprintf("copy-%dpeer-%%-of-curl", len(ps)))
		}
	}
	// Stopped at about half (as a killed hive stops), then run again: the
	// second copy fetches what the first lacked.
	dir := b.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Stopped the moment half the file has arrived, mid-block, as a
	// kill lands.
	counted := &countingTransport{next: client.Transport, at: size/2 + 3<<19, hook: cancel}
	cc := &http.Client{Transport: counted}
	_, err := transfer.Copy(ctx, "big", dir, transfer.Options{Client: cc, Peers: peers[:1]})
	if err == nil {
		b.Fatal("the copy finished though it was stopped half way")
	}
	first := counted.n.Load()
	if _, err := transfer.Copy(context.Background(), "big", dir, transfer.Options{Client: cc, Peers: peers[:1]}); err != nil {
		b.Fatal(err)
	}
	again := counted.n.Load() - size
	b.ReportMetric(100*float64(again)/size, "%-fetched-again-after-a-stop-at-half")
	b.Logf("stopped after %d MiB fetched; %d KiB fetched twice in all", first>>20, again>>10)
}

// countingTransport counts the response body bytes its client read, and
// calls hook once when they pass at.
type countingTransport struct {
	next http.RoundTripper
	n    atomic.Int64
	at   int64
	hook func()
	once sync.Once
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, t: c}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	t *countingTransport
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.t.n.Add(int64(n)) >= b.t.at && b.t.hook != nil {
		b.t.once.Do(b.t.hook)
	}
	return n, err
}

// TestModelCopy_PeerCutOff: in network namespaces, hive d copies a model
// from hives b and c; c's link is cut mid-copy (no reset: its packets stop).
// d gives up on c once it has been quiet a while and takes the rest from b;
// the copy is whole.
func TestModelCopy_PeerCutOff(t *testing.T) {
	const size = 48 << 20
	nc := newNetCluster(t)
	ha, hb, hc, hd := nc.host("a"), nc.host("b"), nc.host("c"), nc.host("d")
	a := nc.node(ha, "")
	var file string
	for _, h := range []*netlab.Host{hb, hc} {
		dir := filepath.Join(t.TempDir(), "models")
		file = writeModel(t, dir, "big", size)
		nc.node(h, a.gossipAddr, "--models-dir", dir)
	}
	dst := filepath.Join(t.TempDir(), "d-models")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	// Slow enough (16 MB/s) that the cut lands mid-copy.
	nc.node(hd, a.gossipAddr, "--models-dir", dst, "--transfer-rate", "16")
	testutil.Eventually(t, 20*time.Second, "b and c list big", func() error {
		var v api.ClusterView
		if err := nc.getJSON(a.httpAddr, api.PathCluster, &v); err != nil {
			return err
		}
		n := 0
		for _, h := range v.Hives {
			for _, e := range h.Catalog {
				if e.Name == "big" {
					n++
				}
			}
		}
		if n != 2 {
			return fmt.Errorf("%d hives list big", n)
		}
		return nil
	})
	done := make(chan error, 1)
	var out, errOut string
	go func() {
		var err error
		out, errOut, err = runRbee("model", "copy", "big", "--hive", "d", "--http-addr", a.httpAddr, "--cluster-key-file", nc.keyFile)
		done <- err
	}()
	// Cut c once d has some of the file.
	testutil.Eventually(t, 20*time.Second, "the copy under way", func() error {
		ents, _ := os.ReadDir(dst)
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".part") {
				return nil
			}
		}
		return errors.New("no .part yet")
	})
	start := time.Now()
	hc.Cut()
	defer hc.Heal()
	if err := <-done; err != nil {
		t.Fatalf("copy: %v\n%s\n%s", err, out, errOut)
	}
	t.Logf("copy ended %v after c was cut:\n%s", time.Since(start).Round(time.Millisecond), out)
	want, _ := os.ReadFile(file)
	got, err := os.ReadFile(filepath.Join(dst, "big.gguf"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("d holds %d of %d bytes: %v", len(got), len(want), err)
	}
}
