# syntax=docker/dockerfile:1.7
# GPU inference worker: `python -m services.worker` on CUDA, optionally TensorRT FP16 (KEFU_RUNNER_TENSORRT=1).
# Build from the repository root:  docker build -f docker/worker-gpu.Dockerfile -t kefu/worker-gpu:0.1.0 .
#
# Base: the official PaddlePaddle 3.x GPU image (CUDA 12.6, cuDNN 9.5, TensorRT 10.5 libraries), the one
# bench/gpu/ measured with. The models are exported by Paddle 3.3.1, so paddlepaddle-gpu==3.3.1 comes from
# Paddle's own cu126 index (PyPI's newest paddlepaddle-gpu is 2.6.2 and cannot load PIR programs). The CPU
# `paddlepaddle` line of the serving lock is left out: it would shadow the GPU build.
# Python 3.11 (the project's version) is uv's managed CPython, installed under /opt/kefu.

ARG PADDLE_GPU_IMAGE=paddlepaddle/paddle:3.0.0-gpu-cuda12.6-cudnn9.5-trt10.5
ARG PADDLE_GPU_VERSION=3.3.1
ARG PADDLE_INDEX=https://www.paddlepaddle.org.cn/packages/stable/cu126/

# ── build: Python 3.11 + a venv with the serving set and the Paddle GPU build ─────────────────────────
FROM ${PADDLE_GPU_IMAGE} AS build
ARG PADDLE_GPU_VERSION
ARG PADDLE_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_INSTALL_DIR=/opt/kefu/python UV_NO_CACHE=1
RUN python3 -m pip install uv==0.13.9
COPY requirements/serving.lock /tmp/serving.lock
RUN uv python install 3.11 \
 && uv venv -p 3.11 /opt/kefu/venv \
 && grep -v -E '^paddlepaddle==' /tmp/serving.lock > /tmp/serving-gpu.lock \
 && uv pip install -p /opt/kefu/venv/bin/python -r /tmp/serving-gpu.lock \
 && uv pip install -p /opt/kefu/venv/bin/python --index-url "${PADDLE_INDEX}" "paddlepaddle-gpu==${PADDLE_GPU_VERSION}" \
 && /opt/kefu/venv/bin/python -c "import importlib.metadata as m, sys; m.version('paddlepaddle-gpu'); \
sys.exit('CPU paddlepaddle present' if 'paddlepaddle' in {d.metadata['Name'] for d in m.distributions()} else 0)"

# ── runtime: same CUDA / cuDNN / TensorRT libraries, the venv, the serving code, a non-root user ────────
FROM ${PADDLE_GPU_IMAGE} AS runtime
RUN groupadd --system --gid 10001 kefu \
 && useradd --system --uid 10001 --gid kefu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kefu
COPY --from=build /opt/kefu /opt/kefu
WORKDIR /app
COPY services/ /app/services/
ENV PATH=/opt/kefu/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    GLOG_minloglevel=2 \
    KEFU_WORKER_HOST=0.0.0.0 \
    KEFU_WORKER_PORT=8001 \
    KEFU_WORKER_INTERNAL_PORT=9001 \
    KEFU_WORKER_REPOSITORY=/models \
    KEFU_RUNNER_DEVICE=gpu \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8001 9001
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/v2/health/live', timeout=2)"]
ENTRYPOINT ["python", "-m", "services.worker"]
