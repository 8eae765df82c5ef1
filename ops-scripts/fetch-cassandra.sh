#!/usr/bin/env bash
# Fetches Apache Cassandra (org.apache.cassandra:cassandra-all and its whole runtime
# classpath) and the Jolokia JVM agent from Maven Central into the cache:
#
#   $ANCHISES_CACHE/cassandra/<version>/lib/*.jar
#   $ANCHISES_CACHE/jolokia/jolokia-agent-jvm-<v>-javaagent.jar
#
# Usage: ops-scripts/fetch-cassandra.sh [VERSION|--previous]
#   VERSION     a 5.0.x version (default: the pinned one)
#   --previous  the version before the pinned one (for rolling upgrades)
# Idempotent: a version already fetched completely is not fetched again.
# Prints the version's directory on the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

version="${1:-$ANCHISES_CASSANDRA_VERSION}"
[[ "$version" == "--previous" ]] && version="$ANCHISES_CASSANDRA_PREVIOUS_VERSION"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not a Cassandra version: '$version' (expected e.g. 5.0.9)"

jdk="$(require_jdk17)"
require_maven
export JAVA_HOME="$jdk"

dest="$ANCHISES_CACHE/cassandra/$version"
agent_dir="$ANCHISES_CACHE/jolokia"
agent="$agent_dir/jolokia-agent-jvm-$ANCHISES_JOLOKIA_VERSION-javaagent.jar"
dep_plugin="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

if [[ ! -f "$dest/.complete" ]]; then
  echo "fetching Cassandra $version from Maven Central into $dest" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # A throwaway pom whose only dependency is cassandra-all: Maven resolves the whole
  # runtime classpath (jamm, jna, netty natives, chronicle…) from its pom.
  cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>anchises</groupId><artifactId>fetch-cassandra</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
</project>
POM
  rm -rf "$dest.partial"
  if ! (cd "$work" && mvn -B -q "$dep_plugin:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$dest.partial/lib" >"$work/mvn.log" 2>&1); then
    tail -20 "$work/mvn.log" >&2
    die "Maven could not resolve org.apache.cassandra:cassandra-all:$version"
  fi
  ls "$dest.partial/lib/cassandra-all-$version.jar" >/dev/null || die "cassandra-all-$version.jar missing after the fetch"
  echo "$version" > "$dest.partial/VERSION"
  touch "$dest.partial/.complete"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
fi

if [[ ! -f "$agent" ]]; then
  echo "fetching the Jolokia JVM agent $ANCHISES_JOLOKIA_VERSION into $agent_dir" >&2
  mkdir -p "$agent_dir"
  work2="$(mktemp -d)"
  if ! (cd "$work2" && mvn -B -q "$dep_plugin:copy" \
        -Dartifact="org.jolokia:jolokia-agent-jvm:$ANCHISES_JOLOKIA_VERSION:jar:javaagent" \
        -DoutputDirectory="$work2/out" >"$work2/mvn.log" 2>&1); then
    tail -20 "$work2/mvn.log" >&2
    die "Maven could not resolve org.jolokia:jolokia-agent-jvm:$ANCHISES_JOLOKIA_VERSION:javaagent"
  fi
  mv "$work2/out/"*.jar "$agent"
  rm -rf "$work2"
fi

echo "$dest"
