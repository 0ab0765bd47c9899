# The project image: the MLflow server, one-off jobs (`fraud-bootstrap`: `fraudops containerize`,
# training) and, outside Compose, the fraud API itself (`fraudops run`). In the Compose stack
# fraud-api runs the containerized Bento instead. Locked dependencies (uv.lock), no dev tools,
# no Airflow.
#   docker build -t fraud-mlops:latest .
# BASE_IMAGE must provide python3.11 (the local-engine run passes a Debian base built with
# debootstrap, see compose.local.yaml).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG UV_GROUPS="--no-default-groups"
ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never \
    PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/var/lib/fraud/bentoml \
    FRAUD_DATA_DIR=/var/lib/fraud/data/demo \
    FRAUD_HOST=0.0.0.0 \
    BENTOML_DO_NOT_TRACK=True
RUN python3 -m pip install --no-cache-dir --break-system-packages uv==0.13.* 2>/dev/null \
    || python3 -m pip install --no-cache-dir uv==0.13.*
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-install-project ${UV_GROUPS}
COPY training/ training/
COPY serving/ serving/
COPY service.py bentofile.yaml ./
COPY data/sample/ data/sample/
COPY dags/ dags/
RUN uv sync --frozen ${UV_GROUPS} \
    && useradd --system --uid 10001 --home-dir /var/lib/fraud fraud \
    && mkdir -p /var/lib/fraud /var/lib/mlflow \
    && chown -R fraud /var/lib/fraud /var/lib/mlflow /app
USER fraud
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s \
    CMD python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"
CMD ["fraudops", "run"]
