#!/usr/bin/env bash
# Entry of the PostgreSQL stand-in: on an empty PGDATA, initialise a cluster whose superuser
# is POSTGRES_USER (password POSTGRES_PASSWORD) with the database POSTGRES_DB, as the official
# image does; then exec the server, listening on every interface (PID 1 gets the stop signal).
set -euo pipefail

user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}

init_cluster() {
    if [[ -z "${POSTGRES_PASSWORD-}" && "${POSTGRES_HOST_AUTH_METHOD-}" != trust ]]; then
        echo "postgres: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD-}") \
        --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    printf 'host all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" \
        >>"$PGDATA/pg_hba.conf"
    if [[ "$database" != postgres ]]; then
        postgres --single -j -D "$PGDATA" postgres >/dev/null <<<"CREATE DATABASE \"$database\";"
    fi
    echo "postgres: initialised $PGDATA (user $user, database $database)"
}

if [[ "${1-}" == postgres ]]; then
    [[ -s "$PGDATA/PG_VERSION" ]] || init_cluster
    shift
    exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
