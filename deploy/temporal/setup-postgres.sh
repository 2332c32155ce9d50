#!/bin/sh
# Create (or upgrade) Temporal's two PostgreSQL databases, then exit: the `temporal-schema`
# service of docker-compose.yml. Idempotent: `create` fails harmlessly on an existing database
# and `update-schema` only applies missing versions. Adapted from temporalio/samples-server
# (compose/scripts/setup-postgres.sh, MIT).
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PWD:?POSTGRES_PWD is required}"
export SQL_PASSWORD="$POSTGRES_PWD"
PORT="${DB_PORT:-5432}"
SCHEMA=/etc/temporal/schema/postgresql/v12

echo "waiting for PostgreSQL at ${POSTGRES_SEEDS}:${PORT}"
until nc -z -w 5 "$POSTGRES_SEEDS" "$PORT"; do sleep 1; done

for db in temporal temporal_visibility; do
  dir=temporal
  [ "$db" = temporal_visibility ] && dir=visibility
  sql() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -u "$POSTGRES_USER" -p "$PORT" --db "$db" "$@"; }
  sql create || echo "database $db exists"
  sql setup-schema -v 0.0 || echo "schema of $db exists"
  sql update-schema -d "$SCHEMA/$dir/versioned"
done
echo "PostgreSQL schema ready"
