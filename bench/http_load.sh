#!/usr/bin/env bash
# REST read load while the ledger workload runs: wrk (Debian) against
# GET /api/v1/accounts/{id} of a daemon that is ingesting transactions at the
# same time. Prints wrk's figures (requests/s, latency distribution) and how
# many transactions the daemon applied meanwhile.
#   bench/http_load.sh [--duration 20] [--connections 32] [--rate 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=20 connections=32 rate=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "usage: $0 [--duration S] [--connections N] [--rate TX_PER_S]" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
scripts/build >/dev/null
bin=${KEEL_BUILD_DIR:-build}/src/app/keel
data=$(mktemp -d /tmp/keel-http-load.XXXXXX)
trap 'kill $daemon $generator 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT

"$bin" serve --data-dir "$data" --http 127.0.0.1:0 2> "$data/serve.log" &
daemon=$!
for _ in $(seq 1 300); do [ -f "$data/http.addr" ] && break; sleep 0.1; done
addr=$(cat "$data/http.addr")
for _ in $(seq 1 300); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.1; done

# Ingestion keeps running through the measurement.
"$bin" gen ledger --into-log --data-dir "$data" --accounts 1000 --clients 100 \
  --transactions $((rate * (duration + 30))) --rate "$rate" --seed 7 > /dev/null 2>&1 &
generator=$!
for _ in $(seq 1 300); do curl -sf "http://$addr/api/v1/accounts/acc-000007" >/dev/null && break; sleep 0.1; done
applied() { curl -sf "http://$addr/api/v1/runtime" | grep -o '"task":"accounts/[0-9]*"[^}]*"records":[0-9]*' | grep -o '"records":[0-9]*' | cut -d: -f2 | paste -sd+ | bc; }
before=$(applied)
echo "cores: $(nproc); wrk -t2 -c$connections -d${duration}s GET /api/v1/accounts/acc-000007 while ingesting $rate tx/s"
wrk -t2 -c"$connections" -d"${duration}s" --latency "http://$addr/api/v1/accounts/acc-000007"
after=$(applied)
echo "transactions applied during the run: $((after - before)) ($(( (after - before) / duration ))/s)"
