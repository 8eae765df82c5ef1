#!/usr/bin/env bash
# Runs Anchises locally: fetches Cassandra, builds the sidecar, starts one Cassandra
# node on 127.0.0.1 under `anchises node`, waits until it is NORMAL and prints how to
# reach it. Ctrl-C drains and stops the node. Data: $ANCHISES_RUN_DIR
# (default ~/.local/share/anchises/local).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ops-scripts/fetch-cassandra.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/anchises-target}"
cargo build --release -p anchises --bin anchises
bin="$CARGO_TARGET_DIR/release/anchises"

run_dir="${ANCHISES_RUN_DIR:-$HOME/.local/share/anchises/local}"
mkdir -p "$run_dir"
config="$run_dir/anchises.toml"
if [[ ! -f "$config" ]]; then
  cat > "$config" <<TOML
# Written by ops-scripts/run-local.sh; edit freely.
[node]
cluster_name = "local"
data_dir = "$run_dir/node"
num_tokens = 1
initial_token = "0"

[cassandra]
fast_start = true
TOML
fi

"$bin" node --config "$config" >"$run_dir/anchises.log" 2>&1 &
sidecar=$!
trap 'echo "stopping (drain, then exit)…"; kill -TERM $sidecar 2>/dev/null; wait $sidecar' INT TERM
echo "anchises node started (pid $sidecar, log $run_dir/anchises.log); waiting for Cassandra…"
if ! "$bin" wait-ready --timeout 5m; then
  tail -20 "$run_dir/anchises.log" >&2
  kill -TERM $sidecar; wait $sidecar || true
  exit 1
fi
cat <<MSG

Cassandra is NORMAL.
  CQL:          127.0.0.1:9042
  sidecar API:  http://127.0.0.1:7878   (try: $bin status, $bin ring)
  data:         $run_dir/node
Press Ctrl-C to drain and stop it.
MSG
wait $sidecar
