# rbee tasks. just is optional: each recipe is one plain command that README
# also shows.

# Build the rbee binary into ./bin/rbee.
build:
    go build -o bin/rbee ./cmd/rbee

# Run every test with the race detector (what CI runs).
test:
    go test -race -count=1 ./...

# Benchmarks: failover times, false deaths, partition heals (root), queen
# ingest CPU, routing latency
# and throughput beside direct and nginx (apt-get install nginx-light),
# failover under load, scheduler decisions.
bench:
    go test -run '^$' -bench . -benchtime 1x -timeout 30m ./...

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
