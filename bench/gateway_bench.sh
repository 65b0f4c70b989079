#!/usr/bin/env bash
# Gateway benchmarks, each part a separate process on 127.0.0.1:
#   1. coalesced-waiter latency: N requests for one cold key sent at once, upstream latency 200 ms
#      (N = 100 and 1,000; three rounds each, fresh keys) -> upstream calls, p50 / p99 / max
#   2. cache-hit throughput and latency: wrk -t2 -c64 -d10s --latency on a cached 1 KiB answer
#   3. the same wrk run answered by the disk tier: a gateway with no memory tier (memory = 0)
# Prints figures; bench/RESULTS.md records them with the machine and date.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/unherd
TOOL=build/bench/unherd-bench
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$TOOL" upstream --latency-ms 200 --body-bytes 1024 --cache-control "max-age=3600" > "$work/up.out" &
for _ in $(seq 100); do grep -q port "$work/up.out" 2>/dev/null && break; sleep 0.05; done
up_port=$(awk '/port/ {print $2}' "$work/up.out")

cat > "$work/unherd.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
threads = 2
access_log = ""
[cache]
memory = "256MiB"
store = "none"
[[routes]]
name = "bench"
prefix = "/"
upstream = "http://127.0.0.1:${up_port}"
TOML
"$BIN" serve --config "$work/unherd.toml" > "$work/gw.out" 2>&1 &
for _ in $(seq 100); do grep -q listening "$work/gw.out" 2>/dev/null && break; sleep 0.05; done
gw_port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\) (admin http:\/\/127.0.0.1:\([0-9]*\)).*/\1/p' "$work/gw.out")
admin_port=$(sed -n 's/.*(admin http:\/\/127.0.0.1:\([0-9]*\)).*/\1/p' "$work/gw.out")
upstream_requests() { curl -s "http://127.0.0.1:${admin_port}/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["upstream_requests"])'; }

echo "# gateway benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "## coalesced waiters, one cold key, upstream latency 200 ms"
for n in 100 1000; do
  for round in 1 2 3; do
    before=$(upstream_requests)
    line=$("$TOOL" herd --port "$gw_port" --n "$n" --target "/herd/n${n}/r${round}")
    after=$(upstream_requests)
    echo "N=$n round=$round upstream_calls=$((after - before)) $line"
    sleep 0.3
  done
done

echo "## cache hits, 1 KiB body: wrk -t2 -c64 -d10s --latency"
curl -s -o /dev/null "http://127.0.0.1:${gw_port}/hit/1k"
if command -v wrk > /dev/null; then
  wrk -t2 -c64 -d10s --latency "http://127.0.0.1:${gw_port}/hit/1k" | grep -E "Requests/sec|Transfer/sec|  50%|  99%|Latency "
else
  echo "wrk not installed: scripts/install-deps bench"
fi
echo "## gateway RSS after the runs: $(ps -o rss= -p "$(pgrep -f "serve --config $work/unherd.toml" | head -1)") KiB"

echo "## disk-tier hits, 1 KiB body, no memory tier: wrk -t2 -c64 -d10s --latency"
sed -e 's/^memory = .*/memory = "0"/' -e "s|^store = .*|store = \"disk\"\npath = \"$work/disk\"|" \
  "$work/unherd.toml" > "$work/disk.toml"
"$BIN" serve --config "$work/disk.toml" > "$work/disk.out" 2>&1 &
for _ in $(seq 100); do grep -q listening "$work/disk.out" 2>/dev/null && break; sleep 0.05; done
disk_port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\) (admin.*/\1/p' "$work/disk.out")
curl -s -o /dev/null "http://127.0.0.1:${disk_port}/hit/1k"
for _ in $(seq 100); do
  curl -s -D - -o /dev/null "http://127.0.0.1:${disk_port}/hit/1k" | grep -qi "x-cache-tier: disk" && break
  sleep 0.05
done
echo "check: $(curl -s -D - -o /dev/null "http://127.0.0.1:${disk_port}/hit/1k" | grep -i x-cache | tr -d '\r' | xargs)"
if command -v wrk > /dev/null; then
  wrk -t2 -c64 -d10s --latency "http://127.0.0.1:${disk_port}/hit/1k" | grep -E "Requests/sec|Transfer/sec|  50%|  99%|Latency "
fi
