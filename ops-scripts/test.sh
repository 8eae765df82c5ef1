#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Cassandra + Jolokia from Maven
# Central, the moto server), builds, then runs unit tests and the real-Cassandra
# integration tests (serially: each node wants ~1 GB of memory).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ops-scripts/fetch-cassandra.sh >/dev/null
ops-scripts/install-test-tools.sh

# A target directory outside the clone keeps rebuilds fast across fresh clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/anchises-target}"
cargo build --workspace --bins --examples
cargo test --workspace --exclude anchises-integration
cargo test -p anchises-integration -- --test-threads=1
