#!/usr/bin/env bash
# Installs the tools the test suite needs besides Cassandra: the moto S3/EC2 server in a
# virtualenv under the cache. Idempotent.
#   $ANCHISES_CACHE/venv/bin/moto_server
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

MOTO_VERSION="5.2.5"
venv="$ANCHISES_CACHE/venv"
if [[ -x "$venv/bin/moto_server" ]] && "$venv/bin/python" -c "import moto; assert moto.__version__ == '$MOTO_VERSION'" 2>/dev/null; then
  exit 0
fi
command -v python3 >/dev/null 2>&1 || die "python3 not found on the PATH"
echo "installing moto[server] $MOTO_VERSION into $venv" >&2
python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
"$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
"$venv/bin/moto_server" --help >/dev/null || die "moto_server does not run"
