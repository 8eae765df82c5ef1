# Shared helpers for the ops scripts. Source it; do not run it.

# Where fetched Cassandra versions, the Jolokia agent and test tools live.
ANCHISES_CACHE="${ANCHISES_CACHE:-$HOME/.cache/anchises}"

# The Cassandra version the project pins (the newest 5.0.x that resolves from Maven
# Central) and the one before it, which the rolling-upgrade work needs.
ANCHISES_CASSANDRA_VERSION="${ANCHISES_CASSANDRA_VERSION:-5.0.9}"
ANCHISES_CASSANDRA_PREVIOUS_VERSION="5.0.8"
ANCHISES_JOLOKIA_VERSION="2.6.0"

die() { echo "error: $*" >&2; exit 1; }

# Prints the home of a JDK 17. Cassandra 5.0 installs a SecurityManager at startup,
# which JDK 18+ refuses without extra flags and JDK 24+ cannot run, so "any java on
# the PATH" is not good enough: look for 17 explicitly.
find_jdk17() {
  local candidates=()
  [[ -n "${ANCHISES_JAVA_HOME:-}" ]] && candidates+=("$ANCHISES_JAVA_HOME")
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME")
  local d
  for d in /usr/lib/jvm/*17* /usr/lib/jvm/*; do [[ -d "$d" ]] && candidates+=("$d"); done
  if command -v java >/dev/null 2>&1; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")")
  fi
  for d in "${candidates[@]}"; do
    [[ -x "$d/bin/java" ]] || continue
    if "$d/bin/java" -version 2>&1 | head -1 | grep -qE 'version "17[."]'; then
      echo "$d"; return 0
    fi
  done
  return 1
}

require_jdk17() {
  find_jdk17 || die "JDK 17 not found (looked at \$ANCHISES_JAVA_HOME, \$JAVA_HOME, /usr/lib/jvm and java on the PATH). Install one, e.g. 'apt-get install openjdk-17-jdk-headless', or set ANCHISES_JAVA_HOME."
}

require_maven() {
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) not found on the PATH. Install it, e.g. 'apt-get install maven'."
}
