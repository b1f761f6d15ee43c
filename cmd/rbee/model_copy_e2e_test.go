package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbee/rbee/internal/hubtest"
	"github.com/rbee/rbee/internal/testutil"
	"github.com/rbee/rbee/node/api"
)

// TestModelCopy_BetweenHives: `rbee model copy` moves a model hive a holds
// to hive b's --models-dir over the cluster's TLS; b lists it as a holds
// it (the same engine), and once a is gone b starts it and answers. A second
// copy is refused (b has it), and so is a copy into a node without
// --models-dir.
func TestModelCopy_BetweenHives(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	src := filepath.Join(c.dir, "a-models")
	file := writeModel(t, src, "blob", 24<<20+123)
	dst := filepath.Join(c.dir, "b-models")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	a := c.start(lcNode(c, "a", "", "--model", "big="+file+",engine=sim,load_ms=50"))[0]
	ps := c.start(lcNode(c, "b", a.gossipAddr, "--models-dir", dst), lcNode(c, "e", a.gossipAddr, "--roles", "none"))
	e := ps[1]
	waitModelState(t, c, e, "big", "available", "a")
	// --hive b is looked up in e's member list: b must be in it.
	c.waitConverged([]*proc{a, ps[0], e}, 20*time.Second)

	out := c.rbee("model", "copy", "big", "--hive", "b", "--http-addr", e.httpAddr, "--cluster-key-file", c.keyFile)
	t.Logf("rbee model copy:\n%s", out)
	if !strings.Contains(out, "big on b at "+filepath.Join(dst, "big.gguf")) {
		t.Fatalf("rbee model copy said:\n%s", out)
	}
	want, _ := os.ReadFile(file)
	got, err := os.ReadFile(filepath.Join(dst, "big.gguf"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("copied %d of %d bytes: %v", len(got), len(want), err)
	}
	waitModelState(t, c, e, "big", "available", "a", "b")
	// a hashed the file for the copy: its catalog says so from now on.
	sum := sha256.Sum256(want)
	testutil.Eventually(t, 10*time.Second, "a's catalog carries the digest", func() error {
		var v api.ClusterView
		if err := c.getJSON(e.httpAddr, api.PathCluster, &v); err != nil {
			return err
		}
		for _, h := range v.Hives {
			for _, m := range h.Catalog {
				if h.HiveID == "a" && m.Name == "big" && m.SHA256 == hex.EncodeToString(sum[:]) && m.Bytes == int64(len(want)) {
					return nil
				}
			}
		}
		return errors.New("not yet")
	})

	_, stderr, err := runRbee("model", "copy", "big", "--hive", "b", "--http-addr", e.httpAddr, "--cluster-key-file", c.keyFile)
	if err == nil || !strings.Contains(stderr, "in b's catalog already") {
		t.Errorf("a second copy: %v\n%s", err, stderr)
	}
	_, stderr, err = runRbee("model", "copy", "big", "--hive", "e", "--http-addr", e.httpAddr, "--cluster-key-file", c.keyFile)
	if err == nil || !strings.Contains(stderr, "no --models-dir") {
		t.Errorf("a copy into a node without --models-dir: %v\n%s", err, stderr)
	}

	// With a gone, b serves the model from its copy.
	c.kill(a)
	lc := newLCClient(c)
	var r lcReply
	for range 3 {
		if r = lc.chat(e.httpAddr, "big", 4, 30*time.Second); r.err == nil && r.status == http.StatusOK {
			break
		}
	}
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("request for the copied model with its first hive gone: %v", r)
	}
	waitModelState(t, c, e, "big", "loaded", "b")
}

// TestModelCopy_OnDemand: the only hive with a model's file can never fit
// it; another hive with a --models-dir and room copies the file from it
// (shared), slowly enough for the waiting client to hear the copy's
// progress, then starts it and answers.
func TestModelCopy_OnDemand(t *testing.T) {
	t.Parallel()
	c := newLCCluster(t)
	file := writeModel(t, filepath.Join(c.dir, "a-models"), "blob", 12<<20)
	dst := filepath.Join(c.dir, "b-models")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	a := c.start(lcNode(c, "a", "", "--model", "big="+file+",engine=sim,vram=3000,load_ms=50,share=true", "--sim-gpus", "1x2GiB"))[0]
	ps := c.start(lcNode(c, "b", a.gossipAddr, "--models-dir", dst, "--sim-gpus", "1x8GiB", "--transfer-rate", "4"),
		lcNode(c, "e", a.gossipAddr, "--roles", "none"))
	e := ps[1]
	waitModelState(t, c, e, "big", "available", "a")

	lc := newLCClient(c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sent := time.Now()
	resp, err := lc.post(ctx, e.httpAddr, "big", 4, true)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	total := time.Since(sent)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "data: [DONE]") {
		t.Fatalf("stream: %d %v\n%s", resp.StatusCode, err, body)
	}
	if !strings.Contains(string(body), ": rbee copying big to b ") {
		t.Errorf("the client heard nothing of the copy:\n%s", body)
	}
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, ": rbee copying") {
			t.Logf("client heard %q", l)
			break
		}
	}
	want, _ := os.ReadFile(file)
	got, err := os.ReadFile(filepath.Join(dst, "big.gguf"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("b holds %d of %d bytes: %v", len(got), len(want), err)
	}
	waitModelState(t, c, e, "big", "loaded", "a", "b")
	// The cold start's parts: the copy (at --transfer-rate 4 MB/s) and
	// the engine's load, from b's log; the rest is rbee's own.
	b := ps[0]
	var copyTook, load time.Duration
	for _, a := range logRecords(b.log(), "model copied") {
		copyTook, _ = time.ParseDuration(a["took"])
	}
	for _, a := range logRecords(b.log(), "worker ready") {
		load, _ = time.ParseDuration(a["load_time"])
	}
	t.Logf("cold start of a model whose file was on another hive: %v to the whole answer = copy %v (12 MiB at 4 MB/s) + engine load %v + the rest %v (placement, start, request)",
		total.Round(time.Millisecond), copyTook.Round(time.Millisecond), load.Round(time.Millisecond), (total - copyTook - load).Round(time.Millisecond))
}

// TestModelPull_FromAHub: `rbee model pull` has a hive download a GGUF by
// its tag from a Hugging Face-compatible hub (HF_ENDPOINT and HF_TOKEN from
// the CLI's shell), checked, into its --models-dir and catalog, where the
// cluster lists it; `rbee model ls` shows it and the folder's free space;
// `rbee model rm` deletes it.
func TestModelPull_FromAHub(t *testing.T) {
	t.Parallel()
	hub := hubtest.New(t)
	data := make([]byte, 6<<20)
	copy(data, "GGUF")
	for i := 4; i < len(data); i++ {
		data[i] = byte(i * 31)
	}
	hub.Add("acme/Tiny-GGUF", "tiny-Q4_K_M.gguf", data, true)
	hub.Add("acme/Tiny-GGUF", "tiny-Q8_0.gguf", data[:1<<20], true)
	hub.RequireToken("hf_test")
	c := newLCCluster(t)
	dst := filepath.Join(c.dir, "b-models")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	a := c.start(lcNode(c, "a", ""))[0]
	b := c.start(lcNode(c, "b", a.gossipAddr, "--models-dir", dst))[0]
	env := []string{"HF_ENDPOINT=" + hub.URL(), "HF_TOKEN=hf_test"}
	out, stderr, err := runRbeeEnv(env, "model", "pull", "hf:acme/Tiny-GGUF:Q4_K_M", "--hive", "b", "--http-addr", a.httpAddr, "--cluster-key-file", c.keyFile)
	if err != nil || !strings.Contains(out, "tiny-Q4_K_M on b at "+filepath.Join(dst, "tiny-Q4_K_M.gguf")) {
		t.Fatalf("rbee model pull: %v\n%s\n%s", err, out, stderr)
	}
	t.Logf("rbee model pull:\n%s", out)
	if got, _ := os.ReadFile(filepath.Join(dst, "tiny-Q4_K_M.gguf")); !bytes.Equal(got, data) {
		t.Fatal("the pulled file is not the hub's")
	}
	waitModelState(t, c, a, "tiny-Q4_K_M", "unavailable", "b")

	// Without the token the hub refuses, and the CLI says what to do.
	_, stderr, err = runRbeeEnv([]string{"HF_ENDPOINT=" + hub.URL()}, "model", "pull", "hf:acme/Tiny-GGUF:Q8_0", "--hive", "b", "--http-addr", a.httpAddr, "--cluster-key-file", c.keyFile)
	if err == nil || !strings.Contains(stderr, "HF_TOKEN") {
		t.Errorf("pull without a token: %v\n%s", err, stderr)
	}
	// A REF no hive could read is refused by the CLI itself.
	if _, stderr, err := runRbee("model", "pull", "Qwen/Qwen2.5", "--hive", "b", "--http-addr", a.httpAddr, "--cluster-key-file", c.keyFile); err == nil || !strings.Contains(stderr, "want hf:ORG/REPO") {
		t.Errorf("a bad REF: %v\n%s", err, stderr)
	}
	ls := c.rbee("model", "ls", "--http-addr", b.httpAddr, "--cluster-key-file", c.keyFile)
	if !strings.Contains(ls, "tiny-Q4_K_M") || !strings.Contains(ls, "free in --models-dir") || !strings.Contains(ls, "6.0 MiB") {
		t.Errorf("rbee model ls:\n%s", ls)
	}
	rm := c.rbee("model", "rm", "tiny-Q4_K_M", "--hive", "b", "--http-addr", a.httpAddr, "--cluster-key-file", c.keyFile)
	if !strings.Contains(rm, "removed tiny-Q4_K_M from b") {
		t.Errorf("rbee model rm: %s", rm)
	}
	if _, err := os.Stat(filepath.Join(dst, "tiny-Q4_K_M.gguf")); !os.IsNotExist(err) {
		t.Errorf("the file is still there: %v", err)
	}
}
