#!/usr/bin/env bash
# Local stand-ins for the `apache/kafka` and `postgres` images, for a machine with a Docker
# engine but no image registry: built from Debian's packages and Maven Central on the local
# base (base.sh). Each image is built once; delete it to build it again.
#
# usage: deploy/image/stand-ins.sh     (from anywhere; prints the settings that use them)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
base=${INGEST_LOCAL_BASE_IMAGE:-ingest-worker-base:bookworm}
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/deploy/local/pom.xml")
kafka_image=ingest-worker-kafka:$version
postgres_image=ingest-worker-postgres:15
cache=$root/.local/cache

exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The broker's and the tools' jars, resolved once per Kafka version.
kafka_jars() {
    local libs=$cache/kafka-image-$version
    if [[ ! -e $libs/.complete ]]; then
        rm -rf "$libs"
        mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
            -Dkafka.version="$version" -DoutputDirectory="$libs" >"$libs.log" 2>&1 \
            || { tail -n 20 "$libs.log" >&2; exit 1; }
        touch "$libs/.complete"
    fi
    echo "$libs"
}

build_kafka() {
    local context libs
    libs=$(kafka_jars)
    context=$(mktemp -d)
    cp -r "$here/kafka/Dockerfile" "$here/kafka/docker" "$here/kafka/bin" "$context/"
    cp -r "$libs" "$context/libs"
    docker build -q --network host --build-arg BASE_IMAGE="$base" -t "$kafka_image" \
        "$context" >/dev/null
    rm -rf "$context"
}

build_postgres() {
    docker build -q --network host --build-arg BASE_IMAGE="$base" -t "$postgres_image" \
        "$here/postgres" >/dev/null
}

"$here/base.sh" "$base"
exists "$kafka_image" || { echo "building $kafka_image"; build_kafka; }
exists "$postgres_image" || { echo "building $postgres_image"; build_postgres; }
cat <<SETTINGS
stand-ins ready; use them with:
  INGEST_STACK_MODE=docker INGEST_STACK_KAFKA_IMAGE=$kafka_image INGEST_STACK_POSTGRES_IMAGE=$postgres_image
  KAFKA_IMAGE=$kafka_image POSTGRES_IMAGE=$postgres_image BASE_IMAGE=$base   (deploy/compose.yaml)
SETTINGS
