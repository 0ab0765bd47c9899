# python3.11 from Debian bookworm: the BASE_IMAGE of Dockerfile and Dockerfile.airflow.
FROM fraud-local/base:bookworm
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv \
    && ln -sf /usr/bin/python3 /usr/local/bin/python \
    && rm -rf /var/lib/apt/lists/*
