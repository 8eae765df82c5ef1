#!/usr/bin/env bash
# Installs Cassandra Medusa (thelastpickle/cassandra-medusa, the backup tool the backup
# benchmark compares Anchises with) from PyPI into a virtualenv of its own under the
# cache. Idempotent.
#   $ANCHISES_CACHE/medusa-venv/bin/medusa
# Medusa drives Cassandra through `nodetool`; a Maven-jar install has none, so
# ops-scripts/nodetool stands in for it (see the comment there).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

# The newest release on PyPI when this was written; it installs with Python 3.11.
MEDUSA_VERSION="0.31.0"
venv="$ANCHISES_CACHE/medusa-venv"
installed() {
  [[ -x "$venv/bin/medusa" ]] &&
    [[ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("cassandra-medusa"))' 2>/dev/null)" == "$MEDUSA_VERSION" ]]
}
if installed; then
  exit 0
fi
command -v python3 >/dev/null 2>&1 || die "python3 not found on the PATH"
echo "installing cassandra-medusa $MEDUSA_VERSION into $venv" >&2
python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
"$venv/bin/pip" install -q --disable-pip-version-check "cassandra-medusa==$MEDUSA_VERSION"
"$venv/bin/medusa" --help >/dev/null || die "medusa does not run"
installed || die "cassandra-medusa $MEDUSA_VERSION is not what got installed"
