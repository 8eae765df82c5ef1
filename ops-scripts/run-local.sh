#!/usr/bin/env bash
# Runs Anchises locally: fetches Cassandra, builds, starts the control plane and with
# one request a 3-node cluster "local" on 127.0.0.100-102 (each node one
# `anchises node` process), then prints how to reach it. Ctrl-C drains and stops
# every node. State: $ANCHISES_RUN_DIR (default ~/.local/share/anchises/control).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

nodes="${ANCHISES_NODES:-3}"
ops-scripts/fetch-cassandra.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/anchises-target}"
cargo build --release -p anchises --bin anchises
bin="$CARGO_TARGET_DIR/release/anchises"

run_dir="${ANCHISES_RUN_DIR:-$HOME/.local/share/anchises/control}"
mkdir -p "$run_dir"
"$bin" control --data-dir "$run_dir" >"$run_dir/control.log" 2>&1 &
control=$!
trap 'echo "stopping every node (drain, then exit)…"; kill -TERM $control 2>/dev/null; wait $control' INT TERM
for _ in $(seq 50); do
  kill -0 $control 2>/dev/null || break
  curl -sf http://127.0.0.1:7979/v1/health >/dev/null 2>&1 && break
  sleep 0.2
done
# Another control plane on the port would answer the health check for ours.
if ! kill -0 $control 2>/dev/null; then
  echo "error: the control plane did not start:" >&2
  tail -5 "$run_dir/control.log" >&2
  exit 1
fi
if "$bin" cluster show local >/dev/null 2>&1; then
  echo "cluster local already exists (restarted from $run_dir); waiting for its nodes…"
  sleep 5
else
  "$bin" cluster create local --nodes "$nodes"
fi
"$bin" cluster show local
cat <<MSG

The cluster is up. CQL on any node above, port 9042 (e.g. 127.0.0.100:9042).
  $bin cluster show local
  $bin --url http://127.0.0.100:7878 status
  $bin cluster grow local --nodes 4
Control plane log: $run_dir/control.log. Press Ctrl-C to stop every node.
MSG
wait $control
