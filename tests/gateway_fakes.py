"""Fake inference workers for the gateway's contract tests: an `httpx.MockTransport` speaking the Open
Inference Protocol (V2) for the intent, sentiment and faq models, with switchable failures per replica.

Predictions are rules on the text, so every policy path can be reached on purpose:
- intent: 投诉 → 投诉 0.92; 人工 → 转人工 0.95; 快递 / 物流 / 发货 → 物流查询 0.88; 退款 → 退款 0.9;
  "嗯嗯" → 其他/闲聊 0.2 (low confidence); anything else → 商品咨询 0.7
- sentiment: 垃圾 / 气死 / 太差 → negative 0.99; otherwise positive 0.85
- faq: `HashingEmbedder(dim=32)` (character n-grams), so a query equal to an FAQ question has cosine 1.0
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

from services.faq.store import InMemoryFaqStore, embed_entries
from services.faq.testing import HashingEmbedder, load_demo_kb

INTENTS = [
    "物流查询",
    "退换货",
    "退款",
    "商品咨询",
    "支付/账单",
    "投诉",
    "促销活动",
    "账户/密码",
    "转人工",
    "其他/闲聊",
]
SENTIMENTS = ["negative", "positive"]
DIM = 32
EMBEDDER = HashingEmbedder(dim=DIM)
DEMO_KEY = "kefu-demo-key-change-me"


def intent_of(text: str) -> tuple[str, float]:
    for words, label, p in (
        (("投诉",), "投诉", 0.92),
        (("人工",), "转人工", 0.95),
        (("快递", "物流", "发货"), "物流查询", 0.88),
        (("退款",), "退款", 0.9),
        (("嗯嗯",), "其他/闲聊", 0.2),
    ):
        if any(w in text for w in words):
            return label, p
    return "商品咨询", 0.7


def negative_of(text: str) -> float:
    return 0.99 if any(w in text for w in ("垃圾", "气死", "太差")) else 0.15


def probs(labels: list[str], top: str, p: float) -> list[float]:
    rest = (1.0 - p) / (len(labels) - 1)
    return [p if label == top else rest for label in labels]


@dataclass
class Replica:
    """Behaviour of one fake replica: ok, down (connect error), error (HTTP 500), timeout, or reject (400)."""

    mode: str = "ok"
    versions: dict[str, list[str]] = field(
        default_factory=lambda: {"intent": ["1"], "sentiment": ["1"], "faq": ["1"]}
    )
    calls: Counter = field(default_factory=Counter)  # (model, kind) -> count
    texts: list = field(default_factory=list)  # every infer call's texts


class FakeWorkers:
    """Replicas by base URL; `transport` goes to `create_app(transport=...)`."""

    def __init__(self, urls: list[str], max_batch_size: int = 64):
        self.replicas = {url.rstrip("/"): Replica() for url in urls}
        self.max_batch_size = max_batch_size
        self.down_models: set[str] = set()  # models every replica answers 503 for (infer and ready)
        self.override: dict[tuple[str, str], str] = {}  # (model, version) -> intent label it always answers
        self.transport = httpx.MockTransport(self.handle)

    def replica(self, url: str) -> Replica:
        return self.replicas[url.rstrip("/")]

    def set_versions(self, model: str, versions: list[str]) -> None:
        for r in self.replicas.values():
            r.versions[model] = versions

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        replica = self.replicas[base]
        parts = request.url.path.strip("/").split("/")  # v2 models m [versions v] (infer|ready)?
        model = parts[2]
        kind = parts[-1] if parts[-1] in ("infer", "ready") else "metadata"
        replica.calls[(model, kind)] += 1
        if replica.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if replica.mode == "timeout" and kind == "infer":
            raise httpx.ReadTimeout("timed out", request=request)
        if replica.mode == "error" or model in self.down_models:
            return httpx.Response(503, json={"error": f"model {model!r} is not ready"})
        versions = replica.versions[model]
        if kind == "ready":
            return httpx.Response(200, json={"name": model, "ready": True})
        if kind == "metadata":
            params = {
                "task": "embedding" if model == "faq" else "classification",
                "max_batch_size": self.max_batch_size,
                "max_seq_len": 64,
            }
            if model != "faq":
                params["labels"] = INTENTS if model == "intent" else SENTIMENTS
            outputs = (
                [{"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]}]
                if model == "faq"
                else [
                    {"name": "probs", "datatype": "FP32", "shape": [-1, len(params["labels"])]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]},
                ]
            )
            return httpx.Response(
                200,
                json={
                    "name": model,
                    "versions": versions,
                    "platform": "fake",
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": outputs,
                    "parameters": params,
                },
            )
        version = parts[4] if len(parts) > 5 else max(versions, key=int)
        if version not in versions:
            return httpx.Response(404, json={"error": f"model {model!r} has no version {version} serving"})
        if replica.mode == "reject":
            return httpx.Response(400, json={"error": "inputs[0] ('text'): data[0] is empty"})
        texts = json.loads(request.content)["inputs"][0]["data"]
        if len(texts) > self.max_batch_size:
            return httpx.Response(413, json={"error": "too many texts"})
        replica.texts.append((model, version, list(texts)))
        n = len(texts)
        if model == "faq":
            vec = EMBEDDER.embed(texts)
            outputs = [
                {"name": "embedding", "shape": [n, DIM], "datatype": "FP32", "data": vec.reshape(-1).tolist()}
            ]
        else:
            rows, labels = [], []
            for t in texts:
                if model == "intent":
                    label, p = intent_of(t)
                    label = self.override.get((model, version), label)
                    rows.append(probs(INTENTS, label, p))
                else:
                    neg = negative_of(t)
                    label = "negative" if neg >= 0.5 else "positive"
                    rows.append([neg, 1 - neg])
                labels.append(label)
            width = len(rows[0])
            outputs = [
                {
                    "name": "probs",
                    "shape": [n, width],
                    "datatype": "FP32",
                    "data": [x for r in rows for x in r],
                },
                {"name": "label", "shape": [n], "datatype": "BYTES", "data": labels},
            ]
        return httpx.Response(200, json={"model_name": model, "model_version": version, "outputs": outputs})


def demo_store() -> InMemoryFaqStore:
    """The demo knowledge base, embedded with the fake encoder."""
    entries = load_demo_kb()
    store = InMemoryFaqStore(DIM)
    store.upsert(entries, embed_entries(EMBEDDER, entries))
    return store


def embed(text: str) -> np.ndarray:
    return EMBEDDER.embed([text])[0]
