"""`WorkerEmbedder`: the FAQ encoder on the workers, behind the FAQ store's synchronous `Embedder` protocol.

The gateway's own searches embed through `ModelClient.predict("faq", ...)` (async, routed, metered). This
blocking variant serves the code that runs in threads and expects `embed(texts) -> ndarray`: the FAQ admin API
(create / update / import / re-index), seeding an empty store, and the re-index after an encoder change.

It pins one encoder version (the one the knowledge base is indexed with), so every vector written comes from
the same model; `version` reads `<model>-v<N>`, the format `LocalEmbedder` and the collections use. Lists are
sent in chunks of at most the model's max batch size; a failing replica is followed by the next one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
import numpy as np


class EncoderUnavailable(RuntimeError):
    """No replica produced an embedding."""


class WorkerEmbedder:
    def __init__(
        self,
        urls: Sequence[str],
        model: str,
        version: str,
        dim: int,
        batch_size: int = 32,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if not urls:
            raise ValueError("WorkerEmbedder needs at least one worker URL")
        self.urls, self.model, self.number = list(urls), model, version
        self.version = f"{model}-v{version}"  # what the store records (Embedder protocol)
        self.dim, self.batch_size = dim, max(1, batch_size)
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], L2-normalised by the encoder."""
        parts = [
            self._chunk(list(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def _chunk(self, texts: list[str]) -> np.ndarray:
        body = json.dumps(
            {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]},
            ensure_ascii=False,
        ).encode("utf-8")
        path = f"/v2/models/{self.model}/versions/{self.number}/infer"
        errors = []
        for url in self.urls:
            try:
                response = self._client.post(
                    url + path, content=body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as e:
                errors.append(f"{url}: {type(e).__name__}")
                continue
            if response.status_code != 200:
                errors.append(f"{url}: HTTP {response.status_code}")
                if response.status_code < 500:
                    break
                continue
            out = next((o for o in response.json()["outputs"] if o["name"] == "embedding"), None)
            if out is None:
                raise EncoderUnavailable(f"{self.version} returned no embedding output")
            vectors = np.asarray(out["data"], np.float32).reshape(out["shape"])
            if vectors.shape != (len(texts), self.dim):
                raise EncoderUnavailable(
                    f"{self.version} returned {vectors.shape}, expected ({len(texts)}, {self.dim})"
                )
            return vectors
        raise EncoderUnavailable(f"{self.version}: no replica answered ({'; '.join(errors)})")

    def close(self) -> None:
        self._client.close()
