#!/usr/bin/env bash
# A three-node rbee cluster with a cluster key and no workers, on loopback,
# until Ctrl-C: the bare membership (gossip, the election, failover, the
# cluster's TLS between nodes). `rbee demo` is the whole thing, with
# simulated workers, a dashboard and the API.
#
# Ports: gossip 7946-7948 and HTTP 7833-7835, or from RBEE_DEMO_GOSSIP_PORT
# and RBEE_DEMO_HTTP_PORT on. It stops only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
gp0=${RBEE_DEMO_GOSSIP_PORT:-7946}
hp0=${RBEE_DEMO_HTTP_PORT:-7833}
dir=$(mktemp -d)
go build -o "$dir/rbee" ./cmd/rbee
"$dir/rbee" keygen >"$dir/key"
chmod 600 "$dir/key"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
names=(a b c)
for i in 0 1 2; do
  join=()
  [ "$i" -gt 0 ] && join=(--join "127.0.0.1:$gp0")
  "$dir/rbee" node run --name "${names[$i]}" --gossip-addr "127.0.0.1:$((gp0 + i))" --http-addr "127.0.0.1:$((hp0 + i))" \
    "${join[@]}" --cluster-key-file "$dir/key" 2>"$dir/${names[$i]}.log" &
  pids+=($!)
done
# Every node answers, or the demo says which did not and why.
for i in 0 1 2; do
  for _ in $(seq 100); do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "demo: node ${names[$i]} exited; its log:" >&2
      cat "$dir/${names[$i]}.log" >&2
      exit 1
    fi
    "$dir/rbee" node members --http-addr "127.0.0.1:$((hp0 + i))" --cluster-key-file "$dir/key" >/dev/null 2>&1 && continue 2
    sleep 0.1
  done
  echo "demo: node ${names[$i]} did not answer on 127.0.0.1:$((hp0 + i)) within 10 s; its log:" >&2
  cat "$dir/${names[$i]}.log" >&2
  exit 1
done
"$dir/rbee" node members --http-addr "127.0.0.1:$((hp0 + 1))" --cluster-key-file "$dir/key"
cat <<MSG

cluster running; logs in $dir/{a,b,c}.log
  $dir/rbee status --http-addr 127.0.0.1:$hp0 --cluster-key-file $dir/key
  $dir/rbee node members --http-addr 127.0.0.1:$((hp0 + 2)) --cluster-key-file $dir/key
  kill -9 ${pids[0]}      # node a (the queen): watch b or c take over
Ctrl-C stops the cluster.
MSG
wait
