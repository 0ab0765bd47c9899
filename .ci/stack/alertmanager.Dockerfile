FROM fraud-local/base:bookworm
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends prometheus-alertmanager \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /alertmanager && chown prometheus /alertmanager
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
