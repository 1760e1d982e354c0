# syntax=docker/dockerfile:1.7
# Trainer: trains, evaluates and exports models into a model repository (`python -m models.defaults`,
# `python -m models.train`, `python -m export`). A batch job, not a server.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t kefu/trainer:0.1.0 .
# Serving + training sets (pyproject extras), every version pinned by requirements/dev.lock; no test tools.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ── build: a venv with the serving and training sets ─────────────────────────────────────────────────────
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m pip install uv==0.13.9
COPY pyproject.toml README.md /src/
COPY requirements/dev.lock /src/requirements/dev.lock
WORKDIR /src
# Only the extras' requirements are installed (the project itself is copied as source below); dev.lock is a
# constraint file, so every package lands at the version the tests ran with.
RUN uv venv -p /usr/local/bin/python3.11 /opt/kefu/venv \
 && uv pip compile -q pyproject.toml --extra serving --extra training -c requirements/dev.lock -o /tmp/trainer.lock \
 && uv pip install -p /opt/kefu/venv/bin/python --no-cache -r /tmp/trainer.lock

# ── runtime ─────────────────────────────────────────────────────────────────────────────────────────────
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kefu \
 && useradd --system --uid 10001 --gid kefu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kefu
COPY --from=build /opt/kefu/venv /opt/kefu/venv
WORKDIR /app
COPY services/ /app/services/
COPY models/ /app/models/
COPY export/ /app/export/
COPY data/ /app/data/
ENV PATH=/opt/kefu/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    GLOG_minloglevel=2 \
    MKL_DEBUG_CPU_TYPE=5
USER 10001:10001
# A batch job: nothing listens, so there is nothing to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m"]
CMD ["models.defaults", "--repository", "/models"]
