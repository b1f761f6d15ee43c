#!/usr/bin/env bash
# A three-node rbee cluster with a cluster key and no workers, on loopback,
# until Ctrl-C: the bare membership (gossip, the election, failover, the
# cluster's TLS between nodes). `rbee demo` is the whole thing, with
# simulated workers, a dashboard and the API.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
go build -o "$dir/rbee" ./cmd/rbee
"$dir/rbee" keygen >"$dir/key"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
"$dir/rbee" node run --name a --gossip-addr 127.0.0.1:7946 --http-addr 127.0.0.1:7833 --cluster-key-file "$dir/key" 2>"$dir/a.log" &
pids+=($!)
for n in b:7947:7834 c:7948:7835; do
  IFS=: read -r name gp hp <<<"$n"
  "$dir/rbee" node run --name "$name" --gossip-addr "127.0.0.1:$gp" --http-addr "127.0.0.1:$hp" \
    --join 127.0.0.1:7946 --cluster-key-file "$dir/key" 2>"$dir/$name.log" &
  pids+=($!)
done
for _ in $(seq 100); do
  "$dir/rbee" node members --http-addr 127.0.0.1:7834 >/dev/null 2>&1 && break
  sleep 0.1
done
"$dir/rbee" node members --http-addr 127.0.0.1:7834
cat <<MSG

cluster running; logs in $dir/{a,b,c}.log
  curl -s http://127.0.0.1:7833/v1/cluster
  $dir/rbee node members --http-addr 127.0.0.1:7835
  kill -9 \$(pgrep -f 'name a ')      # kill the queen, watch b or c take over
Ctrl-C stops the cluster.
MSG
wait
