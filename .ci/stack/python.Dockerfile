# python3.11 from Debian bookworm: the BASE_IMAGE of Dockerfile and Dockerfile.airflow, and the
# docker.base_image of the Bento's own image (BentoML's Dockerfile then finds uv and python3.11
# here instead of pulling python:3.11-slim).
FROM fraud-local/base:bookworm
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv \
    && ln -sf /usr/bin/python3 /usr/local/bin/python \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m pip install --no-cache-dir --break-system-packages "uv==0.13.*"
