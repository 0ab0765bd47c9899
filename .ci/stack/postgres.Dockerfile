# PostgreSQL 15 from Debian, with the official image's contract: POSTGRES_PASSWORD and
# /docker-entrypoint-initdb.d/*.sh run once on an empty data directory.
FROM fraud-local/base:bookworm
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql \
    && chown postgres /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
