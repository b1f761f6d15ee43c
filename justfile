# rbee tasks. just is optional: each recipe is one plain command that README
# also shows.

# Build the rbee binary into ./bin/rbee.
build:
    go build -o bin/rbee ./cmd/rbee

# Run every test with the race detector (what CI runs).
test:
    go test -race -count=1 ./...

# gofmt, go vet and staticcheck, as CI runs them.
lint:
    test -z "$(gofmt -l $(git ls-files '*.go'))"
    go vet ./...
    go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# Benchmarks. Whole processes, one experiment each (-benchtime 1x):
# failover times, false deaths, partition heals (root), queen ingest CPU
# (and the floor the transport alone sets under it), saturation with and
# without granting ahead,
# routing latency and throughput beside direct, nginx (apt-get install
# nginx-light) and the Go standard library's proxy (RBEE_BENCH_ROUNDS=3 for
# medians of three rounds), failover under load, cold starts and failing engines, Ollama
# cold starts beside the same by hand (../shared/engines),
# fairness (fair vs FIFO), prefix affinity (vs least-loaded), the pause of a
# migrated stream (SIGKILL, and a cut link as root). Then the
# in-process ones at their default length: scheduler decisions (index vs
# scan), memory per waiting request, the feed's report encoding, in-process
# routing, the usage tap and the migration record per token, the collector.
bench:
    go test -run '^$' -bench . -benchtime 1x -timeout 30m ./cmd/rbee/ ./ui/
    go test -run '^$' -bench . -timeout 10m ./scheduler/ ./wsapi/ ./node/...

# Issue 24's data-plane table in one run: routing (three rounds, beside
# nginx and Go's own proxy), saturation (beside nginx, granting ahead and
# not), queen ingest at 1,000 hives and the floor the transport alone sets,
# the dashboard at 1,000 hives. RBEE_BENCH_PROFILE=DIR keeps CPU profiles of
# the nodes; RBEE_TEST_BIN=FILE runs another build of rbee, and
# RBEE_BENCH_STATIC=DIR another build's dashboard beside this one.
bench-dataplane:
    RBEE_BENCH_ROUNDS=3 go test -run '^$' -bench 'Routing$' -benchtime 1x -timeout 30m ./cmd/rbee/
    go test -run '^$' -bench 'Saturation|Ingest$/sessions=1000|IngestFloor' -benchtime 1x -timeout 30m ./cmd/rbee/
    RBEE_BENCH_HIVES=1000 go test -run '^$' -bench Dashboard -benchtime 1x ./ui/

# The fault tests: real nodes in network namespaces, links cut, queens frozen,
# the wire captured (root; apt-get install iproute2 tcpdump).
faults:
    go test -race -count=1 -run 'TestFault' -v ./cmd/rbee/

# Fuzz the wire decoder for a minute.
fuzz:
    go test -run '^$' -fuzz FuzzDecode -fuzztime 60s ./wsapi/

# A whole cluster with simulated workers on this machine (Ctrl-C stops it).
demo:
    go run ./cmd/rbee demo
