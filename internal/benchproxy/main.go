// Command benchproxy is the Go baseline of BenchmarkRouting
// (cmd/rbee/route_bench_test.go): the reverse proxy a Go developer writes
// with the standard library (net/http and httputil.ReverseProxy), with no
// scheduling, authentication, metrics or body inspection. Measured beside
// rbee and nginx in one run, it shows how much of rbee's distance from
// nginx is Go's HTTP stack, and how much rbee's own.
//
// With -key it talks to its upstream, or listens, over the same TLS as
// rbee's nodes between each other (the cluster CA derived from the key,
// TLS 1.3, client certificates), so two of them in a row compare with
// rbee's two hops.
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"

	"github.com/rbee/rbee/wsapi"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := flag.String("upstream", "", "upstream base URL (http:// or https://)")
	keyFile := flag.String("key", "", "cluster key file: TLS between proxies as rbee's nodes use it")
	tlsListen := flag.Bool("tls", false, "listen with TLS (needs -key)")
	flag.Parse()
	if err := run(*listen, *upstream, *keyFile, *tlsListen); err != nil {
		fmt.Fprintln(os.Stderr, "benchproxy:", err)
		os.Exit(1)
	}
}

func run(listen, upstream, keyFile string, tlsListen bool) error {
	up, err := url.Parse(upstream)
	if err != nil || up.Host == "" {
		return fmt.Errorf("upstream %q: want a URL", upstream)
	}
	var ct *wsapi.ClusterTLS
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return err
		}
		k, err := wsapi.ParseKey(string(b))
		if err != nil {
			return fmt.Errorf("key %s: %w", keyFile, err)
		}
		if ct, err = k.NewClusterTLS("benchproxy"); err != nil {
			return err
		}
	}
	tr := &http.Transport{
		// As many idle connections as the benchmark has clients, so
		// that none is closed after its request.
		MaxIdleConnsPerHost: 1024,
		DisableCompression:  true,
	}
	if up.Scheme == "https" {
		if ct == nil {
			return fmt.Errorf("upstream %s: https needs -key", upstream)
		}
		tr.TLSClientConfig = ct.ClientConfig()
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(up)
			r.Out.Host = r.In.Host
		},
		Transport:     tr,
		FlushInterval: -1, // streams pass through event by event
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	if tlsListen {
		if ct == nil {
			return fmt.Errorf("-tls needs -key")
		}
		ln = tls.NewListener(ln, ct.ServerConfig())
	}
	log.Printf("benchproxy listening on %s, upstream %s", ln.Addr(), up)
	return http.Serve(ln, wholeBody(rp))
}

// wholeBody reads each request's body before h sees it, as rbee does. Left
// streaming, the proxy cut about 2% of the benchmark's answers short: the
// server closes the inbound body once the answer's headers are written,
// the transport reads it once more after sending it, and that failed read
// tears down the upstream connection under the answer (golang/go#40747).
func wholeBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		h.ServeHTTP(w, r)
	})
}
