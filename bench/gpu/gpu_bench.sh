#!/usr/bin/env bash
# GPU figures of the worker benchmark: Paddle Inference on the GPU, then TensorRT FP16, same model, same load.
#
#   bench/gpu/gpu_bench.sh [--docker | --host] [--image IMAGE] [--repository model_repository] [--model intent]
#                          [--servers naive,batching] [--concurrency 1,8,32,64] [--duration 10] [--warmup 2]
#                          [--ready-timeout 1200] [--no-tensorrt]
#
# Needs an NVIDIA GPU and a Paddle 3.x GPU build (PyPI's newest paddlepaddle-gpu, 2.6.2, cannot load the PIR
# .json programs this repository exports). Not run in CI. See bench/gpu/README.md.
#
#   --docker  (default when docker is usable) run inside the official Paddle 3.x GPU image ($IMAGE) with
#             `docker run --gpus all`, the checkout mounted at /kefu
#   --host    run here: a Python 3.11 venv that sees a Paddle 3.x GPU build (the image's, or
#             paddlepaddle-gpu from Paddle's own package index, $KEFU_PADDLE_INDEX)
#
# Every figure is printed with the Paddle version and GPU that produced it; results land in
# bench/results/worker-paddle-gpu-*.json, worker-paddle-trt-fp16-*.json and gpu-info-*.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${KEFU_GPU_IMAGE:-ccr-2vdh3abv-pub.cnc.bj.baidubce.com/paddlepaddle/paddle:3.0.0-gpu-cuda12.6-cudnn9.5-trt10.5}"
PADDLE_INDEX="${KEFU_PADDLE_INDEX:-https://www.paddlepaddle.org.cn/packages/stable/cu126/}"
PADDLE_GPU_VERSION="${KEFU_PADDLE_GPU_VERSION:-3.3.1}"  # the CPU wheel that exported the models is 3.3.1
VENV="${KEFU_GPU_VENV:-$HOME/.cache/kefu/venv-gpu}"
MODE=auto
REPOSITORY=model_repository
MODEL=intent
SERVERS=naive,batching
CONCURRENCY=1,8,32,64
DURATION=10
WARMUP=2
READY_TIMEOUT=1200 # TensorRT builds its engines when a server starts: minutes, not seconds
RUN_TRT=1

say() { printf '>> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while (($#)); do
    case "$1" in
    --docker) MODE=docker ;;
    --host) MODE=host ;;
    --image) IMAGE="$2"; shift ;;
    --repository) REPOSITORY="$2"; shift ;;
    --model) MODEL="$2"; shift ;;
    --servers) SERVERS="$2"; shift ;;
    --concurrency) CONCURRENCY="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --ready-timeout) READY_TIMEOUT="$2"; shift ;;
    --no-tensorrt) RUN_TRT=0 ;;
    -h | --help) usage 0 ;;
    *) printf 'unknown option %s\n\n' "$1" >&2; usage 2 ;;
    esac
    shift
done

cd "$ROOT"
case "$REPOSITORY" in /*) REPO_ABS="$REPOSITORY" ;; *) REPO_ABS="$ROOT/$REPOSITORY" ;; esac
[[ -f "$REPO_ABS/$MODEL/config.yaml" ]] ||
    die "no model '$MODEL' in $REPO_ABS: build it first (make models, on any machine) and copy the repository here"

if [[ "$MODE" == auto ]]; then
    if [[ "${KEFU_GPU_IN_CONTAINER:-0}" == 1 ]]; then
        MODE=host
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        MODE=docker
    else
        MODE=host
    fi
fi

# ---------------------------------------------------------------------------------------------- docker mode
if [[ "$MODE" == docker ]]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this machine has no NVIDIA driver"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
        die "nvidia-smi failed: no usable GPU"
    say "running in $IMAGE (docker run --gpus all)"
    mounts=(-v "$ROOT:/kefu" -v "${KEFU_GPU_CACHE:-$HOME/.cache/kefu/gpu-docker}:/root/.cache")
    mkdir -p "${KEFU_GPU_CACHE:-$HOME/.cache/kefu/gpu-docker}"
    inner_repo="$REPOSITORY"
    case "$REPO_ABS" in
    "$ROOT"/*) inner_repo="${REPO_ABS#"$ROOT"/}" ;;
    *)
        mounts+=(-v "$REPO_ABS:/kefu-repository:ro")
        inner_repo=/kefu-repository
        ;;
    esac
    args=(--host --repository "$inner_repo" --model "$MODEL" --servers "$SERVERS" --concurrency "$CONCURRENCY"
        --duration "$DURATION" --warmup "$WARMUP" --ready-timeout "$READY_TIMEOUT")
    ((RUN_TRT)) || args+=(--no-tensorrt)
    exec docker run --rm --gpus all --shm-size 4g "${mounts[@]}" -w /kefu \
        -e KEFU_GPU_IN_CONTAINER=1 -e KEFU_HOST_UID="$(id -u)" -e KEFU_HOST_GID="$(id -g)" \
        -e KEFU_PADDLE_INDEX="$PADDLE_INDEX" -e KEFU_PADDLE_GPU_VERSION="$PADDLE_GPU_VERSION" \
        -e KEFU_GPU_VENV=/root/.cache/kefu-venv-gpu \
        "$IMAGE" bash bench/gpu/gpu_bench.sh "${args[@]}"
fi

# ------------------------------------------------------------------------------------------------ host mode
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; }; then
    warn "nvidia-smi not available; Paddle will say whether it sees a GPU"
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }
has_paddle3_gpu() { # the exact Paddle that exported the models: an older 3.x may refuse a newer PIR program
    KEFU_WANT="$PADDLE_GPU_VERSION" "$1" - >/dev/null 2>&1 <<'EOF'
import os
import sys
import paddle
sys.exit(paddle.__version__ != os.environ["KEFU_WANT"] or not paddle.device.is_compiled_with_cuda())
EOF
}

# 1. a Python 3.11 (the project's version: pyproject requires >=3.11,<3.12)
BASE_PY=""
for candidate in "${KEFU_GPU_PYTHON:-}" python3.11 python3 python; do
    [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 && is_py311 "$candidate" && {
        BASE_PY="$(command -v "$candidate")"
        break
    }
done

# 2. a venv beside (not inside) the checkout; it reuses the base interpreter's Paddle GPU build when it has one
if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    if [[ -n "$BASE_PY" ]] && has_paddle3_gpu "$BASE_PY"; then
        say "using the Paddle GPU build of $BASE_PY (venv with --system-site-packages at $VENV)"
        "$BASE_PY" -m venv --system-site-packages "$VENV"
    elif [[ -n "$BASE_PY" ]]; then
        say "creating $VENV from $BASE_PY"
        "$BASE_PY" -m venv "$VENV"
    else
        say "no Python 3.11 here: creating $VENV with uv's managed CPython 3.11"
        command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv || die "cannot install uv; install Python 3.11"
        UV="$(command -v uv || echo "$(python3 -m site --user-base)/bin/uv")"
        "$UV" venv -q --seed -p 3.11 "$VENV" || die "uv could not provide Python 3.11; install it and retry"
    fi
fi
PY="$VENV/bin/python"
is_py311 "$PY" || die "$VENV is not a Python 3.11 venv: remove it (or set KEFU_GPU_VENV) and retry"

# 3. the serving dependencies, pinned by requirements/serving.lock, minus the CPU Paddle wheel
if [[ ! -f "$VENV/.kefu-serving" || requirements/serving.lock -nt "$VENV/.kefu-serving" ]]; then
    say "installing requirements/serving.lock (without paddlepaddle) into $VENV"
    grep -v -E '^paddlepaddle(-gpu)?==' requirements/serving.lock >"$TMP/serving.lock"
    "$PY" -m pip install -q --disable-pip-version-check -r "$TMP/serving.lock"
    touch "$VENV/.kefu-serving"
fi
if ! has_paddle3_gpu "$PY"; then
    say "installing paddlepaddle-gpu==$PADDLE_GPU_VERSION from $PADDLE_INDEX"
    "$PY" -m pip uninstall -q -y paddlepaddle >/dev/null 2>&1 || true # a CPU wheel would shadow the GPU one
    "$PY" -m pip install -q --disable-pip-version-check "paddlepaddle-gpu==$PADDLE_GPU_VERSION" -i "$PADDLE_INDEX" ||
        die "could not install paddlepaddle-gpu $PADDLE_GPU_VERSION (see bench/gpu/README.md for the fallback)"
    has_paddle3_gpu "$PY" || die "paddle in $VENV is not a 3.x CUDA build"
fi

# 4. which Paddle, which GPU, and does the model answer right on it
mkdir -p bench/results
STAMP="$(date +%Y%m%d-%H%M%S)"
touch "$TMP/started"
INFO="bench/results/gpu-info-$STAMP.json"
export GLOG_minloglevel="${GLOG_minloglevel:-2}" PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}" PYTHONUNBUFFERED=1
say "device check"
"$PY" -m bench.gpu.gpu_info --repository "$REPO_ABS" --model "$MODEL" --json "$INFO" ||
    die "Paddle cannot run $MODEL on the GPU here (see above)"
if ((RUN_TRT)); then
    say "TensorRT FP16 check (builds an engine: may take a minute)"
    if ! "$PY" -m bench.gpu.gpu_info --repository "$REPO_ABS" --model "$MODEL" --tensorrt \
        --json "bench/results/gpu-info-trt-$STAMP.json"; then
        warn "TensorRT is not usable with this build/libraries: skipping the TensorRT run"
        RUN_TRT=0
        TRT_FAILED=1
    fi
fi
PRODUCED_BY="$("$PY" - "$INFO" <<'EOF'
import json, sys
i = json.load(open(sys.argv[1]))
print(f"Paddle {i['paddle_version']} ({i['paddle_commit'][:10]}, CUDA {i['cuda']}, cuDNN {i['cudnn']}, "
      f"TensorRT {i['tensorrt_runtime']}) on {i['device_name']}")
EOF
)"

# 5. the benchmark: the same script and load as on CPU, with the engine chosen by KEFU_RUNNER_*
bench() {
    local label="$1"
    shift
    say "worker benchmark, $label: $PRODUCED_BY"
    env "$@" "$PY" -m bench.worker_bench --repository "$REPO_ABS" --model "$MODEL" --servers "$SERVERS" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
        --ready-timeout "$READY_TIMEOUT" --label "$label" --device-info "$INFO"
}
STATUS=0
bench paddle-gpu KEFU_RUNNER_DEVICE=gpu KEFU_RUNNER_TENSORRT=0 || STATUS=1
if ((RUN_TRT)); then
    bench paddle-trt-fp16 KEFU_RUNNER_DEVICE=gpu KEFU_RUNNER_TENSORRT=1 KEFU_RUNNER_TENSORRT_PRECISION=fp16 ||
        STATUS=1
fi
[[ -n "${TRT_FAILED:-}" ]] && STATUS=1

RESULTS="$(find bench/results -maxdepth 1 -name '*.json' -newer "$TMP/started" | sort | tr '\n' ' ')"
if [[ -n "${KEFU_HOST_UID:-}" && -n "$RESULTS" ]]; then # inside docker: hand the results to the caller's user
    # shellcheck disable=SC2086  # RESULTS is a list of plain file names
    chown "$KEFU_HOST_UID:${KEFU_HOST_GID:-$KEFU_HOST_UID}" $RESULTS || true
fi
say "figures above produced by $PRODUCED_BY"
say "results: ${RESULTS:-none}"
exit "$STATUS"
