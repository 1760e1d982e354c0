"""Deterministic embedders and the demo knowledge base, for tests of the FAQ store and whatever builds on it.

`HashingEmbedder` maps character n-grams of the phrasing key to signed hashed buckets (blake2b, so the same in
every process and Python version) and L2-normalises: texts sharing characters get a high cosine, which is
enough signal to test search plumbing without a model. `ConstantEmbedder` carries no signal at all (every
text has the same vector), for tests that keyword search must pass alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.faq.domain import FaqEntry, phrasing_key, read_faq_jsonl

DEMO_KB = Path(__file__).resolve().parents[2] / "data" / "faq_kb_demo" / "faq.jsonl"


def load_demo_kb() -> list[FaqEntry]:
    """The 91 FAQs of `data/faq_kb_demo/faq.jsonl`."""
    return read_faq_jsonl(DEMO_KB)


class HashingEmbedder:
    """Hashed character n-gram vectors, L2-normalised. `salt` changes every vector (a "new model version")."""

    def __init__(
        self, dim: int = 64, ngrams: Sequence[int] = (1, 2), salt: str = "", version: str | None = None
    ):
        self.dim = dim
        self.ngrams = tuple(ngrams)
        self.salt = salt
        self.version = version or f"hash{dim}{salt}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            key = phrasing_key(text)
            for n in self.ngrams:
                for i in range(len(key) - n + 1):
                    h = hashlib.blake2b(f"{self.salt}\x1f{key[i : i + n]}".encode(), digest_size=8).digest()
                    bucket = int.from_bytes(h[:4], "little") % self.dim
                    out[row, bucket] += 1.0 if h[4] & 1 else -1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class ConstantEmbedder:
    """The uninformative encoder: one fixed unit vector for every text."""

    def __init__(self, dim: int = 64, version: str = "constant"):
        self.dim = dim
        self.version = version

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        out[:, 0] = 1.0
        return out


class FailingEmbedder:
    """Wraps an embedder and raises on the `fail_on`-th call (1-based): a model crash mid re-index."""

    def __init__(self, inner, fail_on: int = 2):
        self.inner = inner
        self.fail_on = fail_on
        self.calls = 0
        self.version, self.dim = inner.version + "-failing", inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.calls >= self.fail_on:
            raise RuntimeError(f"embedder failed on call {self.calls}")
        return self.inner.embed(texts)
