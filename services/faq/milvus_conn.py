"""A `MilvusClient` and what it is connected to; owns the lifetime of an embedded milvus-lite.

For a `.db` uri pymilvus starts milvus-lite inside this process (a gRPC server thread holding the file's
lock) and never stops it. Here every connection to a file is counted, and the last one to close flushes and
stops that server, so the file can be reopened (by this process or another) and nothing is left buffered.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pymilvus import MilvusClient

from services.faq.domain import FaqError, StoreUnavailable

log = logging.getLogger(__name__)
# pymilvus logs every failed RPC at ERROR with a full traceback (one per search while a server is down); the
# store turns each failure into `StoreUnavailable` and its callers report an outage once per interval.
# Its connection manager adds a traceback per failed reconnect (WARNING).
logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
logging.getLogger("pymilvus.client.connection_manager").setLevel(logging.ERROR)

# gRPC waits longer and longer between reconnect attempts while a server is down (1 s, 1.6 s, 2.56 s … up to
# 120 s), so a client saw a restarted milvus-lite server about 4 s after it listened again (measured after a
# 10 s outage). Capped at 0.5 s, it sees it within about 0.3 s; a reconnect attempt is one TCP connect.
RECONNECT_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 500,
}

_lock = threading.Lock()
_users: dict[str, int] = {}  # absolute .db path -> open connections in this process


@contextmanager
def backend_call(what: str):
    """Anything the client raises becomes `StoreUnavailable` naming the operation; domain errors pass."""
    try:
        yield
    except FaqError:
        raise
    except Exception as e:
        raise StoreUnavailable(f"milvus {what} failed: {e}") from e


def is_missing(error: Exception) -> bool:
    """The error says a collection (or alias target) does not exist."""
    msg = str(error).lower()
    return getattr(error, "code", None) == 100 or "not exist" in msg or "not found" in msg


def is_not_loaded(error: Exception) -> bool:
    """The error says the collection is not loaded: a restarted milvus-lite server keeps no load state
    ("Collection '…' is in state 'released'"), Milvus says "collection not loaded" (code 101 on both)."""
    msg = str(error).lower()
    return getattr(error, "code", None) == 101 or "released" in msg or "not loaded" in msg


class ReloadingClient:
    """A `MilvusClient` whose data calls (search, query, writes) that find their collection not loaded call
    `reload()` (load it again) and retry once; every other attribute is the client's own."""

    DATA_CALLS = frozenset(
        {"search", "hybrid_search", "query", "query_iterator", "get", "delete", "upsert", "insert"}
    )

    def __init__(self, client: MilvusClient, reload: Callable[[], None]):
        self.raw, self._reload = client, reload

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if name not in self.DATA_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as e:
                if not is_not_loaded(e):
                    raise
                self._reload()
            return attr(*args, **kwargs)

        return call


class MilvusConnection:
    """`backend`: milvus-lite (embedded file), milvus-lite-server, or milvus."""

    def __init__(self, uri: str, token: str | None = None, timeout_s: float = 10.0):
        self.uri = uri
        self.embedded = str(uri).endswith(".db")
        self._path = os.path.abspath(uri) if self.embedded else None
        self._counted = False
        if self.embedded:
            if not Path(self._path).parent.is_dir():
                raise StoreUnavailable(f"milvus-lite: directory of {uri} does not exist")
            with _lock:
                _users[self._path] = _users.get(self._path, 0) + 1
            self._counted = True
        try:
            self.client = MilvusClient(
                uri=uri, token=token or "", timeout=timeout_s, grpc_options=dict(RECONNECT_OPTIONS)
            )
        except Exception as e:
            self._release()
            hint = (
                "; a .db file serves one process, several need `milvus-lite server`" if self.embedded else ""
            )
            raise StoreUnavailable(f"cannot connect to {uri}: {e}{hint}") from e
        try:
            self.server_version = str(self.client.get_server_version())
        except Exception:
            self.server_version = "unknown"
        self.lite = self.embedded or self.server_version.startswith("milvus_lite")
        self.backend = "milvus-lite" if self.embedded else ("milvus-lite-server" if self.lite else "milvus")

    def close(self, flush: str | None = None) -> None:
        """Closes the client; on milvus-lite flushes `flush` first (it persists its memtable on flush)."""
        if self.lite and flush:
            try:
                self.client.flush(flush)
            except Exception as e:
                log.warning("flush of %s before close failed: %s", flush, e)
        try:
            self.client.close()
        except Exception:
            pass
        self._release()

    def _release(self) -> None:
        if not self._counted:
            return
        self._counted = False
        with _lock:
            left = _users.get(self._path, 0) - 1
            if left > 0:
                _users[self._path] = left
                return
            _users.pop(self._path, None)
            try:  # stop the in-process server: the file is closed and can be reopened
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._path)
            except Exception as e:
                log.warning("could not release milvus-lite for %s: %s", self._path, e)
