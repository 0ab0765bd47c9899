FROM fraud-local/base:bookworm
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown prometheus /prometheus
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
