#!/bin/bash
set -euo pipefail
mkdir -p "$PGDATA" && chown -R postgres "$PGDATA" && chmod 700 "$PGDATA"
as_pg() { su postgres -s /bin/bash -c "$*"; }
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  pwfile=$(mktemp) && echo "$POSTGRES_PASSWORD" >"$pwfile" && chown postgres "$pwfile"
  as_pg "initdb -D '$PGDATA' --username=postgres --pwfile='$pwfile' --auth-host=scram-sha-256 --auth-local=trust" >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  as_pg "pg_ctl -D '$PGDATA' -o \"-c listen_addresses=''\" -w start" >/dev/null
  for f in /docker-entrypoint-initdb.d/*.sh; do
    [[ -e "$f" ]] && su postgres -s /bin/bash -c "MLFLOW_DB_PASSWORD='${MLFLOW_DB_PASSWORD:-}' AIRFLOW_DB_PASSWORD='${AIRFLOW_DB_PASSWORD:-}' DECISIONS_DB_PASSWORD='${DECISIONS_DB_PASSWORD:-}' bash '$f'"
  done
  as_pg "pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
fi
exec su postgres -s /bin/bash -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
