# syntax=docker/dockerfile:1.7
# Gateway: `python -m services.gateway`: public API on :8000 (/v1, /admin/faq, /healthz, a minimal /readyz);
# internal port :9000 (/metrics, /healthz, the detailed /readyz) for Prometheus and probes only.
# Build from the repository root:  docker build -f docker/gateway.Dockerfile -t kefu/gateway:0.1.0 .
# Serving set without paddlepaddle: the gateway calls the workers for every model (the FAQ encoder too) and
# never imports Paddle (tests/test_images.py checks its import graph), so the ~500 MB engine stays out.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ── build: a venv with the pinned serving set, minus the inference engine ────────────────────────────────
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m pip install uv==0.13.9
COPY requirements/serving.lock /tmp/serving.lock
RUN grep -v -E '^paddlepaddle==' /tmp/serving.lock > /tmp/gateway.lock \
 && uv venv -p /usr/local/bin/python3.11 /opt/kefu/venv \
 && uv pip install -p /opt/kefu/venv/bin/python --no-cache -r /tmp/gateway.lock

# ── runtime: the venv, the serving code, a non-root user ────────────────────────────────────────────────
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 kefu \
 && useradd --system --uid 10001 --gid kefu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kefu
COPY --from=build /opt/kefu/venv /opt/kefu/venv
WORKDIR /app
COPY services/ /app/services/
ENV PATH=/opt/kefu/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    KEFU_GATEWAY_HOST=0.0.0.0 \
    KEFU_GATEWAY_PORT=8000 \
    KEFU_GATEWAY_INTERNAL_PORT=9000
USER 10001:10001
EXPOSE 8000 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "services.gateway"]
