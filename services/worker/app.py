"""HTTP layer of the worker: Open Inference Protocol (KServe V2) REST routes, plus Triton's repository API.

    GET  /v2                                       server metadata
    GET  /v2/health/live | /v2/health/ready        liveness | readiness (every model loaded and warm)
    GET  /v2/models/{name}[/versions/{v}]          model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready    model readiness
    POST /v2/models/{name}[/versions/{v}]/infer    inference: one BYTES input of UTF-8 texts
    POST /v2/multi/infer                           the same input for several models (extension
                                                   `multi_model_infer`): one request per chat turn, the
                                                   texts tokenised once per vocabulary; each model answers
                                                   or fails on its own (`results`, in request order)
    POST /v2/repository/index                      models in the repository and their state
    POST /v2/repository/models/{name}/load|unload  hot (re)load per version policy | unload: 403 unless
                                                   model_control_mode=explicit, then a bearer token (401)
    GET  /docs, /openapi.json                      only with docs_enabled

The internal app (its own port, `internal_port`: Prometheus and probes) serves GET /metrics and
/v2/health/live|ready; `create_worker_app` puts both behind one ASGI app that picks by the listening port.
Readiness is live: a model whose engine is dead or hung is not ready (`ServedVersion.ready_now`).

Errors have the protocol's body `{"error": "..."}`; this module alone maps domain errors to status codes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from services.common.http_errors import describe_validation
from services.runtime.repository import ModelRepository, Task
from services.worker.edge import AccessLogMiddleware, install_body_limit, set_header_limit
from services.worker.errors import (
    BatchTooLarge,
    ControlDisabled,
    DeadlineExceeded,
    EngineUnavailable,
    InferenceFailed,
    InvalidInput,
    LoadFailed,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    Unauthenticated,
    WorkerError,
)
from services.worker.manager import ModelManager, ServedVersion, infer_shared
from services.worker.metrics import WorkerMetrics
from services.worker.protocol import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    MetadataTensor,
    ModelFailure,
    ModelMetadataResponse,
    MultiInferenceRequest,
    MultiInferenceResponse,
    ReadyResponse,
    ResponseOutput,
    ServerMetadataResponse,
)
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

STATUS = {
    InvalidInput: 400,
    LoadFailed: 400,
    ModelNotFound: 404,
    Unauthenticated: 401,
    ControlDisabled: 403,
    BatchTooLarge: 413,
    Overloaded: 429,
    InferenceFailed: 500,
    ModelNotReady: 503,
    EngineUnavailable: 503,
    DeadlineExceeded: 504,
}
INPUT_NAME = "text"
EXTENSIONS = ["model_repository", "multi_model_infer"]


def status_of(error: WorkerError) -> int:
    return next((code for cls, code in STATUS.items() if isinstance(error, cls)), 500)


def error_response(error: WorkerError) -> JSONResponse:
    status = status_of(error)
    headers = {}
    if retry := getattr(error, "retry_after_s", None):
        headers["Retry-After"] = str(retry)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": error.message}, status_code=status, headers=headers)


def _describe_validation(e: ValidationError | RequestValidationError) -> str:
    return describe_validation(e, "invalid inference request", drop=("body",))


def public_outputs(served: ServedVersion) -> list[MetadataTensor]:
    if served.task == Task.CLASSIFICATION:
        return [
            MetadataTensor(name="probs", datatype="FP32", shape=[-1, len(served.labels)]),
            MetadataTensor(name="label", datatype="BYTES", shape=[-1]),
        ]
    dim = served.config.outputs[0].dims[-1]
    return [MetadataTensor(name="embedding", datatype="FP32", shape=[-1, dim])]


def parse_texts(body: bytes, served: ServedVersion) -> tuple[InferenceRequest, list[str], list[str]]:
    """Validate an inference request against the model; return it, its texts and the outputs asked for."""
    try:
        request = InferenceRequest.model_validate_json(body)
    except ValidationError as e:
        raise InvalidInput(_describe_validation(e)) from None
    data = input_texts(request)
    check_batch(data, served)
    available = [t.name for t in public_outputs(served)]
    wanted = [o.name for o in request.outputs] if request.outputs else available
    if unknown := [n for n in wanted if n not in available]:
        raise InvalidInput(f"outputs: unknown output(s) {unknown}; this model has {available}")
    return request, data, wanted


def input_texts(request: InferenceRequest | MultiInferenceRequest) -> list[str]:
    """The request's texts: exactly one BYTES input named `text`, shape [N] or [N, 1], non-empty strings."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [i.name for i in request.inputs]
        raise InvalidInput(f"inputs: expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"inputs[0] ({INPUT_NAME!r}): datatype must be BYTES, got {tensor.datatype}")
    data = tensor.data
    if data and all(isinstance(row, list) for row in data):  # [[..], [..]] for shape [N, 1]
        data = [x for row in data for x in row]
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidInput(f"inputs[0] ({INPUT_NAME!r}): shape must be [N] or [N, 1], got {tensor.shape}")
    if tensor.shape[0] != len(data):
        raise InvalidInput(
            f"inputs[0] ({INPUT_NAME!r}): shape {tensor.shape} does not match {len(data)} data elements"
        )
    if not data:
        raise InvalidInput(f"inputs[0] ({INPUT_NAME!r}): no texts")
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise InvalidInput(
                f"inputs[0] ({INPUT_NAME!r}): data[{i}] must be a UTF-8 string, got {type(text).__name__}"
            )
        if not text.strip():
            raise InvalidInput(f"inputs[0] ({INPUT_NAME!r}): data[{i}] is empty")
    return data


def check_batch(data: list[str], served: ServedVersion) -> None:
    if len(data) > served.max_batch_size:
        raise BatchTooLarge(
            f"inputs[0] ({INPUT_NAME!r}): {len(data)} texts exceed max_batch_size {served.max_batch_size}"
        )


def build_response(
    served: ServedVersion,
    request: InferenceRequest | MultiInferenceRequest,
    rows: list[dict],
    wanted: list[str],
) -> dict:
    outputs = []
    n = len(rows)
    for name in wanted:
        if name == "label":
            labels = [served.labels[int(r["probs"].argmax())] for r in rows]
            outputs.append(ResponseOutput(name="label", shape=[n], datatype="BYTES", data=labels))
        else:
            width = len(rows[0][name])
            flat = [round(float(x), 6) for r in rows for x in r[name]]
            outputs.append(ResponseOutput(name=name, shape=[n, width], datatype="FP32", data=flat))
    response = InferenceResponse(
        model_name=served.name, model_version=str(served.number), id=request.id, outputs=outputs
    )
    return response.model_dump(exclude_none=True)


def _failure(name: str, version: str | None, error: WorkerError) -> dict:
    failure = ModelFailure(
        model_name=name, model_version=version, status=status_of(error), error=error.message
    )
    return failure.model_dump(exclude_none=True)


def _version(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidInput(f"version must be a positive integer, got {raw!r}")
    return int(raw)


def metrics_payload(registry: CollectorRegistry | None) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry) if registry is not None else generate_latest()


def create_app(
    settings: WorkerSettings,
    manager: ModelManager | None = None,
    metrics: WorkerMetrics | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the app. Tests pass their own manager (fake backends) and registry."""
    if metrics is None:
        metrics = WorkerMetrics(registry)
    if manager is None:
        manager = ModelManager(ModelRepository(settings.repository), settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await manager.start()
        yield
        await manager.close()

    docs = settings.docs_enabled
    app = FastAPI(
        title="kefu inference worker",
        version="1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.manager = manager
    _install_edge(app, settings)

    async def model_control(request: Request) -> None:
        """Triton's --model-control-mode: none refuses load / unload; explicit takes a bearer token."""
        if settings.model_control_mode != "explicit" or settings.model_control_token is None:
            raise ControlDisabled(
                "model control is disabled on this worker (model_control_mode=none): models load at start; "
                "set model_control_mode=explicit and a model_control_token to allow load / unload"
            )
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = settings.model_control_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise Unauthenticated(
                "load / unload need the header `Authorization: Bearer <model control token>`"
            )

    @app.get("/v2", response_model=ServerMetadataResponse)
    async def server_metadata():
        return ServerMetadataResponse(name="kefu-worker", version="1.0", extensions=EXTENSIONS)

    _health_routes(app, manager)

    @app.get("/v2/models/{name}", response_model=ModelMetadataResponse)
    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadataResponse)
    async def model_metadata(name: str, version: str | None = None):
        served = manager.get(name, _version(version))
        params = {
            "task": served.task.value,
            "max_batch_size": served.max_batch_size,
            "max_seq_len": served.max_seq_len,
        }
        if served.labels:
            params["labels"] = served.labels
        return ModelMetadataResponse(
            name=name,
            versions=[str(v) for v in manager.versions(name)],
            platform=f"paddle_inference/{served.backend.name}",
            inputs=[MetadataTensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
            outputs=public_outputs(served),
            parameters=params,
        )

    @app.get("/v2/models/{name}/ready", response_model=ReadyResponse)
    @app.get("/v2/models/{name}/versions/{version}/ready", response_model=ReadyResponse)
    async def model_ready(name: str, version: str | None = None):
        ok = await manager.ready_now(name, _version(version))
        return JSONResponse(ReadyResponse(name=name, ready=ok).model_dump(), status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer", response_model=InferenceResponse)
    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse)
    async def infer(name: str, request: Request, version: str | None = None):
        started = time.perf_counter()
        served = manager.get(name, _version(version))
        labels = (served.name, str(served.number))
        body = await request.body()  # over max_body_bytes, the body limit answers 413 and this never returns
        inflight = metrics.inflight.labels(*labels)
        inflight.inc()
        try:
            req, texts, wanted = parse_texts(body, served)
            rows = await served.infer(texts, settings.request_timeout_ms / 1000)
            payload = build_response(served, req, rows, wanted)
        except WorkerError:
            metrics.failure.labels(*labels).inc()
            raise
        except Exception:
            metrics.failure.labels(*labels).inc()
            log.exception("inference on %s v%s failed", *labels)
            raise InferenceFailed("internal error during inference") from None
        finally:
            inflight.dec()
        metrics.success.labels(*labels).inc()
        metrics.request_duration.labels(*labels).observe(time.perf_counter() - started)
        return Response(json.dumps(payload, ensure_ascii=False), media_type="application/json")

    @app.post("/v2/multi/infer", response_model=MultiInferenceResponse)
    async def infer_multi(request: Request):
        """The same texts through several models (one chat turn: intent, sentiment, the FAQ encoder). The body
        is checked as one (400 for the request's own faults); then each model answers or fails on its own,
        with the status its infer endpoint would give (`ModelFailure`), so one model down costs only its part."""
        started = time.perf_counter()
        body = await request.body()
        try:
            req = MultiInferenceRequest.model_validate_json(body)
        except ValidationError as e:
            raise InvalidInput(_describe_validation(e)) from None
        texts = input_texts(req)
        refs = [(m.name, m.version) for m in req.models]
        if len(set(refs)) != len(refs):
            raise InvalidInput(f"models: each model and version at most once, got {refs}")
        results: list[dict | None] = [None] * len(refs)
        targets: list[tuple[int, ServedVersion]] = []
        for i, (name, version) in enumerate(refs):
            try:
                served = manager.get(name, _version(version))
                check_batch(texts, served)
                targets.append((i, served))
            except WorkerError as e:
                results[i] = _failure(name, version, e)
        for served in {id(s): s for _, s in targets}.values():
            metrics.inflight.labels(served.name, str(served.number)).inc()
        try:
            answers = await infer_shared([s for _, s in targets], texts, settings.request_timeout_ms / 1000)
        finally:
            for served in {id(s): s for _, s in targets}.values():
                metrics.inflight.labels(served.name, str(served.number)).dec()
        for (i, served), rows in zip(targets, answers, strict=True):
            labels = (served.name, str(served.number))
            if isinstance(rows, BaseException):
                metrics.failure.labels(*labels).inc()
                if not isinstance(rows, WorkerError):
                    log.error("inference on %s v%s failed: %r", *labels, rows)
                    rows = InferenceFailed("internal error during inference")
                results[i] = _failure(served.name, str(served.number), rows)
                continue
            results[i] = build_response(served, req, rows, [t.name for t in public_outputs(served)])
            metrics.success.labels(*labels).inc()
            metrics.request_duration.labels(*labels).observe(time.perf_counter() - started)
        payload = {"results": results} if req.id is None else {"id": req.id, "results": results}
        return Response(json.dumps(payload, ensure_ascii=False), media_type="application/json")

    @app.post("/v2/repository/index")
    async def repository_index():
        on_disk = manager.repository.model_names()
        return [
            {
                "name": n,
                "versions": [str(v) for v in manager.versions(n)],
                "state": "READY" if manager.is_ready(n) else "UNAVAILABLE",
            }
            for n in sorted(set(on_disk) | set(manager.names()))
        ]

    @app.post("/v2/repository/models/{name}/load", dependencies=[Depends(model_control)])
    async def load(name: str):
        versions = await manager.load(name)
        return {"name": name, "versions": [str(v) for v in versions], "state": "READY"}

    @app.post("/v2/repository/models/{name}/unload", dependencies=[Depends(model_control)])
    async def unload(name: str):
        await manager.unload(name)
        return {"name": name, "state": "UNAVAILABLE"}

    return app


def _install_edge(app: FastAPI, settings: WorkerSettings) -> None:
    """Body limit, access log and the one error map, the same on both ports."""
    install_body_limit(app, settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware)

    @app.exception_handler(WorkerError)
    async def _domain_error(_: Request, e: WorkerError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        return error_response(InvalidInput(_describe_validation(e)))


def _health_routes(app: FastAPI, manager: ModelManager) -> None:
    @app.get("/v2/health/live", response_model=LiveResponse)
    async def live():
        return LiveResponse(live=True)

    @app.get("/v2/health/ready", response_model=ReadyResponse)
    async def ready():
        ok = await manager.ready_now()
        return JSONResponse(
            ReadyResponse(ready=ok).model_dump(exclude_none=True), status_code=200 if ok else 503
        )


def create_internal_app(
    settings: WorkerSettings, manager: ModelManager, registry: CollectorRegistry | None = None
) -> FastAPI:
    """The internal port's app: GET /metrics (Prometheus) and /v2/health/live|ready (probes); nothing else."""
    app = FastAPI(title="kefu inference worker (internal)", docs_url=None, redoc_url=None, openapi_url=None)
    _install_edge(app, settings)
    _health_routes(app, manager)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics_payload(registry), media_type=CONTENT_TYPE_LATEST)

    return app


class PortDispatch:
    """One ASGI app for both listening sockets: requests that arrived on `internal_port` go to `internal`,
    the rest (and the lifespan, which loads the models) to `public`. `scope["server"]` is the local address."""

    def __init__(self, public: FastAPI, internal: FastAPI, internal_port: int):
        self.public, self.internal, self.internal_port = public, internal, internal_port
        self.state = public.state

    async def __call__(self, scope, receive, send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server and server[1] == self.internal_port:
            return await self.internal(scope, receive, send)
        return await self.public(scope, receive, send)


def create_worker_app(
    settings: WorkerSettings,
    manager: ModelManager | None = None,
    metrics: WorkerMetrics | None = None,
    registry: CollectorRegistry | None = None,
) -> PortDispatch:
    """The public app and the internal app over one manager and one set of metrics."""
    metrics = metrics or WorkerMetrics(registry)
    manager = manager or ModelManager(ModelRepository(settings.repository), settings, metrics)
    public = create_app(settings, manager, metrics, registry)
    return PortDispatch(public, create_internal_app(settings, manager, registry), settings.internal_port)


def create_app_from_settings(settings: WorkerSettings) -> PortDispatch:
    """The apps of one server process of `python -m services.worker`, from its settings object."""
    set_header_limit(settings.max_header_bytes)  # this process's connections are made after this returns
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_worker_app(settings)


def create_app_from_env() -> PortDispatch:
    """uvicorn factory for `python -m services.worker --processes N` (N > 1): each spawned server process
    builds its own apps from the settings its parent put in the environment."""
    return create_app_from_settings(WorkerSettings())
