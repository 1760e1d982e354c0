"""Domain errors of the worker. No HTTP here: `services/worker/app.py` maps them to status codes."""

from __future__ import annotations


class WorkerError(Exception):
    """Base class; `message` is safe to show to the client."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(WorkerError):
    """The request is malformed or names a wrong field, type or shape (HTTP 400)."""


class BatchTooLarge(WorkerError):
    """More texts in one request than the model's max_batch_size (HTTP 413)."""


class ModelNotFound(WorkerError):
    """No such model or version is loaded (HTTP 404)."""


class ModelNotReady(WorkerError):
    """The model is loading or warming up (HTTP 503, retry)."""

    retry_after_s = 1


class EngineUnavailable(WorkerError):
    """The engine behind a model version is dead or hung (HTTP 503, retry): it is being replaced."""

    retry_after_s = 1


class Unauthenticated(WorkerError):
    """A control route without the right bearer token (HTTP 401)."""


class ControlDisabled(WorkerError):
    """Repository control (load / unload) is off: `model_control_mode` is `none` (HTTP 403)."""


class Overloaded(WorkerError):
    """The queue is full: refused at once rather than queued forever (HTTP 429, retry)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(WorkerError):
    """The request's deadline passed before its batch ran (HTTP 504)."""


class InferenceFailed(WorkerError):
    """The engine failed on the batch that held this request (HTTP 500); other batches are unaffected."""


class LoadFailed(WorkerError):
    """A model version could not be loaded (bad files, manifest mismatch); what served before still serves."""
