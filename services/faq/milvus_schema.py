"""The Milvus collection layout of the FAQ store: schema, names, row <-> entry conversion.

One row per phrasing:

| field | type | what |
|---|---|---|
| id | INT64 primary | `row_id(faq_id, position)`: deterministic, so an upsert replaces rows in place |
| faq_id | VARCHAR | the FAQ |
| position | INT32 | 0 = standard question, 1.. = alternatives in order |
| is_standard | BOOL | position == 0 |
| text | VARCHAR | the phrasing; jieba analyzer (`enable_analyzer`) where BM25 is on |
| text_key | VARCHAR | `phrasing_key(text)`, for duplicate detection |
| question, answer, category | VARCHAR | the FAQ's, on every row so a hit needs no second lookup |
| tags | VARCHAR | JSON list |
| updated_at | INT64 | epoch milliseconds |
| dense | FLOAT_VECTOR(dim) | L2-normalised phrasing embedding, COSINE index |
| sparse | SPARSE_FLOAT_VECTOR | BM25 `Function` output over `text` (absent on servers without BM25) |

Collection property `kefu.faq.embedder_version` records the encoder that produced `dense`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pymilvus import DataType, Function, FunctionType, MilvusClient

from services.faq.domain import (
    MAX_ANSWER_CHARS,
    MAX_PHRASING_CHARS,
    FaqEntry,
    from_epoch_ms,
    phrasing_key,
    to_epoch_ms,
)

PROP_EMBEDDER = "kefu.faq.embedder_version"
HIT_FIELDS = ["faq_id", "position", "text", "question", "answer", "category", "tags"]
ENTRY_FIELDS = [*HIT_FIELDS, "updated_at"]
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]")
_TEXT_BYTES = MAX_PHRASING_CHARS * 4 + 64  # VARCHAR max_length counts UTF-8 bytes


def physical_name(alias: str, embedder_version: str, now: float | None = None) -> str:
    """`<alias>_<embedder version>_<UTC yyyymmddHHMMSSmmm>`, restricted to Milvus' name characters."""
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S") + f"{int(now * 1000) % 1000:03d}"
    version = _NAME_CHARS.sub("_", embedder_version)[:64] or "unknown"
    return f"{alias}_{version}_{stamp}"


def row_id(faq_id: str, position: int) -> int:
    """Deterministic positive int64 primary key of a phrasing row."""
    digest = hashlib.blake2b(f"{faq_id}\x1f{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def jieba_analyzer(words: Sequence[str] = ()) -> dict[str, Any]:
    """analyzer_params for `text`: jieba (search mode) plus the knowledge base's own terms as whole words.
    Same format in Milvus >= 2.5 and milvus-lite (which adds the words to the process-wide jieba)."""
    if not words:
        return {"tokenizer": "jieba"}
    return {"tokenizer": {"type": "jieba", "dict": ["_default_", *words], "mode": "search", "hmm": True}}


def keyword_text(text: str) -> str:
    """The query text given to BM25: NFKC, punctuation and symbols replaced by spaces."""
    text = unicodedata.normalize("NFKC", text)
    return " ".join("".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text).split())


def in_list(values: Sequence[Any]) -> str:
    """A list literal for a filter expression (values are validated ids, folded keys or ints)."""
    return json.dumps(list(values), ensure_ascii=False)


def create_faq_collection(
    client: MilvusClient,
    name: str,
    *,
    dim: int,
    bm25: bool,
    jieba_words: Sequence[str],
    index_type: str,
    consistency_level: str,
    embedder_version: str,
    timeout: float,
) -> None:
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("faq_id", DataType.VARCHAR, max_length=256)
    schema.add_field("position", DataType.INT32)
    schema.add_field("is_standard", DataType.BOOL)
    analyzer = {"enable_analyzer": True, "analyzer_params": jieba_analyzer(jieba_words)} if bm25 else {}
    schema.add_field("text", DataType.VARCHAR, max_length=_TEXT_BYTES, **analyzer)
    schema.add_field("text_key", DataType.VARCHAR, max_length=_TEXT_BYTES)
    schema.add_field("question", DataType.VARCHAR, max_length=_TEXT_BYTES)
    schema.add_field("answer", DataType.VARCHAR, max_length=MAX_ANSWER_CHARS * 4 + 64)
    schema.add_field("category", DataType.VARCHAR, max_length=256)
    schema.add_field("tags", DataType.VARCHAR, max_length=4096)
    schema.add_field("updated_at", DataType.INT64)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index("dense", index_type=index_type, metric_type="COSINE")
    if bm25:
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(
        name,
        schema=schema,
        consistency_level=consistency_level,
        properties={PROP_EMBEDDER: embedder_version},
        timeout=timeout,
    )
    # sync=False: the collection is empty, and pymilvus' wait polls every 0.5 s through AllocTimestamp,
    # which milvus-lite does not implement; the store loads the collection next
    client.create_index(name, index, timeout=timeout, sync=False)


def has_bm25(description: dict[str, Any]) -> bool:
    return any(f.get("type") == FunctionType.BM25 for f in description.get("functions") or [])


def dense_dims(description: dict[str, Any]) -> list[int]:
    return [int(f.get("params", {}).get("dim", 0)) for f in description["fields"] if f["name"] == "dense"]


def to_rows(entries: Sequence[FaqEntry], vectors: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for e, v in zip(entries, vectors, strict=True):
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        tags, updated = json.dumps(e.tags, ensure_ascii=False), to_epoch_ms(e.updated_at)
        for p, text in enumerate(e.phrasings):
            rows.append(
                {
                    "id": row_id(e.faq_id, p),
                    "faq_id": e.faq_id,
                    "position": p,
                    "is_standard": p == 0,
                    "text": text,
                    "text_key": phrasing_key(text),
                    "question": e.question,
                    "answer": e.answer,
                    "category": e.category,
                    "tags": tags,
                    "updated_at": updated,
                    "dense": v[p].tolist(),
                }
            )
    return rows


def entry_from_rows(rows: list[dict[str, Any]]) -> FaqEntry:
    rows = sorted(rows, key=lambda r: r["position"])
    std = rows[0]
    return FaqEntry(
        faq_id=std["faq_id"],
        question=std["question"],
        answer=std["answer"],
        category=std["category"],
        alternatives=[r["text"] for r in rows[1:]],
        tags=json.loads(std["tags"] or "[]"),
        updated_at=from_epoch_ms(int(std["updated_at"])),
    )


def hit_row(hit: Any) -> dict[str, Any]:
    """The stored fields of a search hit, tags decoded."""
    entity = hit["entity"]
    row = {k: entity.get(k) for k in HIT_FIELDS}
    row["tags"] = json.loads(row["tags"] or "[]")
    return row
