# syntax=docker/dockerfile:1.7
# CPU inference worker: `python -m services.worker` (Open Inference Protocol on :8001; /metrics on the internal
# port :9001, for Prometheus only), Paddle Inference + oneDNN.
# Build from the repository root:  docker build -f docker/worker-cpu.Dockerfile -t kefu/worker-cpu:0.1.0 .
# Serving set only (requirements/serving.lock): no paddlenlp, no training or test packages.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ── build: a venv with the pinned serving set ───────────────────────────────────────────────────────────
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m pip install uv==0.13.9
COPY requirements/serving.lock /tmp/serving.lock
RUN uv venv -p /usr/local/bin/python3.11 /opt/kefu/venv \
 && uv pip install -p /opt/kefu/venv/bin/python --no-cache -r /tmp/serving.lock

# ── runtime: the venv, the serving code, a non-root user ────────────────────────────────────────────────
FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: OpenMP runtime the Paddle CPU build links against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kefu \
 && useradd --system --uid 10001 --gid kefu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kefu
COPY --from=build /opt/kefu/venv /opt/kefu/venv
WORKDIR /app
COPY services/ /app/services/
ENV PATH=/opt/kefu/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    GLOG_minloglevel=2 \
    MKL_DEBUG_CPU_TYPE=5 \
    KEFU_WORKER_HOST=0.0.0.0 \
    KEFU_WORKER_PORT=8001 \
    KEFU_WORKER_INTERNAL_PORT=9001 \
    KEFU_WORKER_REPOSITORY=/models \
    KEFU_RUNNER_DEVICE=cpu
USER 10001:10001
EXPOSE 8001 9001
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/v2/health/live', timeout=2)"]
ENTRYPOINT ["python", "-m", "services.worker"]
