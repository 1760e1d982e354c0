"""FAQ knowledge-base domain: entries, search hits, errors. No HTTP and no storage here.

A FAQ entry is one standard question (标准问) with its answer, a category, a few alternative phrasings (相似问)
and tags. Every phrasing (the standard question or an alternative) is searchable on its own; a search hit names
the phrasing that matched and the FAQ it belongs to.

Two phrasings are "the same" when their `phrasing_key`s are equal: NFKC, case-folded, with whitespace,
punctuation and control characters removed ("能开专票吗？" == "能开 专票吗"). A phrasing may belong to one FAQ
only, across the whole knowledge base.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_FAQ_ID_CHARS = 64
MAX_PHRASING_CHARS = 200  # a standard question or an alternative
MAX_ANSWER_CHARS = 4000
MAX_CATEGORY_CHARS = 32
MAX_ALTERNATIVES = 50
MAX_TAGS = 16
MAX_TAG_CHARS = 32
FAQ_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
_FORBIDDEN_LABEL_CHARS = re.compile(r'["\\\x00-\x1f\x7f]')  # keeps category/tag safe inside filter literals

SearchSource = Literal["dense", "bm25", "hybrid"]


# ── errors ──────────────────────────────────────────────────────────────────────────────────────────


class FaqError(Exception):
    """Base class; `message` is safe to show to the caller (no user text beyond what they sent)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidFaq(FaqError):
    """An entry breaks a rule: empty question/answer, too long, duplicate phrasing inside one entry, bad id."""


class DuplicateQuestion(FaqError):
    """A phrasing already belongs to another FAQ. Names the phrasing and both FAQ ids."""

    def __init__(self, phrasing: str, faq_id: str, existing_faq_id: str):
        super().__init__(
            f"phrasing {phrasing!r} of {faq_id} already belongs to {existing_faq_id}; "
            f"a phrasing may belong to one FAQ only"
        )
        self.phrasing = phrasing
        self.faq_id = faq_id
        self.existing_faq_id = existing_faq_id


class FaqNotFound(FaqError):
    """No FAQ with this id."""


class InvalidQuery(FaqError):
    """A search or listing request is malformed: bad top_k, mode, vector shape, paging."""


class ModeNotSupported(FaqError):
    """The backend cannot serve this search mode (BM25 on a Milvus without BM25 functions)."""


class StoreUnavailable(FaqError):
    """The vector database is unreachable, refused the operation, or is misconfigured (retry or page someone)."""


class ReindexFailed(FaqError):
    """A re-index did not complete; the alias still points at the collection that served before."""


# ── phrasing normalisation ──────────────────────────────────────────────────────────────────────────


def phrasing_key(text: str) -> str:
    """The identity of a phrasing: NFKC, case-folded, whitespace/punctuation/control characters removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PZC" and not ch.isspace())


def check_unicode(text: str, what: str) -> str:
    """`text` unchanged when it is valid Unicode (encodable as UTF-8), else a `ValueError` naming `what`: a
    JSON string may carry a lone surrogate (`"\\ud800"`) that no encoder, store or response can take."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{what} holds a lone surrogate (U+{ord(text[e.start]):04X} at character {e.start + 1}): "
                "not valid Unicode text"
            ) from None
    return text


def _clean(text: Any, what: str, limit: int) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string")
    text = check_unicode(text, what).strip()
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > limit:
        raise ValueError(f"{what} is {len(text)} characters long (max {limit})")
    return text


def _label(text: Any, what: str, limit: int) -> str:
    text = _clean(text, what, limit)
    if _FORBIDDEN_LABEL_CHARS.search(text):
        raise ValueError(f"{what} {text!r} contains a quote, backslash or control character")
    return text


def utc_ms(value: datetime) -> datetime:
    """Timezone-aware UTC at millisecond precision (what the stores keep); naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def to_epoch_ms(value: datetime) -> int:
    return int(utc_ms(value).timestamp() * 1000)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# ── entries and hits ────────────────────────────────────────────────────────────────────────────────


class FaqEntry(BaseModel):
    """One FAQ. Construct with keywords; a rule broken raises `InvalidFaq` naming the FAQ and the rule.

    Texts are stored stripped; tags are de-duplicated in order; `updated_at` is UTC at millisecond precision.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    faq_id: str = Field(description="stable id, e.g. faq-001 (letters, digits, _ . : -)")
    question: str = Field(description="standard question (标准问)")
    answer: str = Field(description="standard answer shown to the customer")
    category: str = Field("", description="business category, e.g. 物流查询; empty = none")
    alternatives: list[str] = Field(default_factory=list, description="alternative phrasings (相似问)")
    tags: list[str] = Field(default_factory=list, description="keywords, e.g. 顺丰, 电子发票")
    updated_at: datetime = Field(
        default_factory=lambda: utc_ms(datetime.now(UTC)), description="last change, UTC"
    )

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise InvalidFaq(_describe(e, data.get("faq_id"))) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> FaqEntry:  # type: ignore[override]
        if isinstance(obj, dict):
            return cls(**obj)
        return super().model_validate(obj, *args, **kwargs)

    @field_validator("faq_id", mode="before")
    @classmethod
    def _faq_id(cls, v: Any) -> str:
        v = _clean(v, "faq_id", MAX_FAQ_ID_CHARS)
        if not re.match(FAQ_ID_PATTERN, v):
            raise ValueError(f"faq_id {v!r} must match {FAQ_ID_PATTERN}")
        return v

    @field_validator("question", mode="before")
    @classmethod
    def _question(cls, v: Any) -> str:
        return _clean(v, "question", MAX_PHRASING_CHARS)

    @field_validator("answer", mode="before")
    @classmethod
    def _answer(cls, v: Any) -> str:
        return _clean(v, "answer", MAX_ANSWER_CHARS)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, v: Any) -> str:
        if v is None or (isinstance(v, str) and not v.strip()):
            return ""
        return _label(v, "category", MAX_CATEGORY_CHARS)

    @field_validator("alternatives", mode="before")
    @classmethod
    def _alternatives(cls, v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str) or not isinstance(v, Iterable):
            raise ValueError("alternatives must be a list of strings")
        v = [_clean(a, f"alternative {i + 1}", MAX_PHRASING_CHARS) for i, a in enumerate(v)]
        if len(v) > MAX_ALTERNATIVES:
            raise ValueError(f"{len(v)} alternatives (max {MAX_ALTERNATIVES})")
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str) or not isinstance(v, Iterable):
            raise ValueError("tags must be a list of strings")
        tags = list(dict.fromkeys(_label(t, "tag", MAX_TAG_CHARS) for t in v))
        if len(tags) > MAX_TAGS:
            raise ValueError(f"{len(tags)} tags (max {MAX_TAGS})")
        return tags

    @field_validator("updated_at")
    @classmethod
    def _updated_at(cls, v: datetime) -> datetime:
        return utc_ms(v)

    @model_validator(mode="after")
    def _distinct_phrasings(self) -> FaqEntry:
        seen: dict[str, str] = {}
        for p in self.phrasings:
            key = phrasing_key(p)
            if not key:
                raise ValueError(f"phrasing {p!r} has no letters or digits")
            if key in seen:
                raise ValueError(f"phrasing {p!r} repeats {seen[key]!r} within the entry")
            seen[key] = p
        return self

    @property
    def phrasings(self) -> list[str]:
        """Standard question first, then the alternatives, in order (position 0, 1, 2 …)."""
        return [self.question, *self.alternatives]


class FaqHit(BaseModel):
    """One FAQ found by a search: the FAQ, the phrasing that matched best, and how well.

    `score` is in 0..1 and higher is better; what it means depends on `source` (see `services/faq/scoring.py`):
    dense = cosine clipped at 0; bm25 = 2/π·atan(raw BM25); hybrid = the fused score divided by its maximum
    (rank based for RRF). For thresholds across modes use `cosine`, present whenever a query vector was used.
    """

    model_config = ConfigDict(frozen=True)

    faq_id: str
    question: str = Field(description="the standard question of the FAQ")
    answer: str
    category: str
    tags: list[str] = Field(default_factory=list)
    matched_text: str = Field(description="the phrasing (standard or alternative) that matched best")
    matched_standard: bool = Field(description="the matched phrasing is the standard question")
    score: float = Field(ge=0.0, le=1.0, description="normalised score of this source, higher is better")
    source: SearchSource
    cosine: float | None = Field(None, description="cosine(query vector, matched phrasing); None for bm25")
    bm25: float | None = Field(None, description="raw BM25 of the matched phrasing (bm25 mode only)")


def _describe(error: ValidationError, faq_id: Any) -> str:
    who = f"faq {faq_id}" if isinstance(faq_id, str) and faq_id.strip() else "faq"
    problems = []
    for err in error.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        problems.append(f"{where}: {msg}" if where else msg)
    return f"{who}: " + "; ".join(problems)


# ── the faq.jsonl format ────────────────────────────────────────────────────────────────────────────
# One JSON object a line (`data/faq_kb_demo/faq.jsonl`, the admin API's JSONL import and export): `id` (or
# `faq_id`), question, answer, category, alternatives, tags. Read here once, for the seed file and for imports.

RECORD_KEYS = ("id", "question", "answer", "category", "alternatives", "tags")  # faq.jsonl, in its order
RECORD_FIELDS = frozenset({*RECORD_KEYS, "faq_id"})


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line of a faq.jsonl file: its record, or why it cannot be read."""

    row: int  # line number in the file
    record: dict[str, Any] | None = None
    error: str | None = None


def parse_faq_jsonl(text: str) -> list[JsonlLine]:
    """The records of a faq.jsonl text, each with its line number; a line that is no JSON object carries its
    error instead (the caller decides whether one bad line rejects the file)."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(JsonlLine(n, error=f"not JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:  # the C scanner recurses once per [ or {
            rows.append(JsonlLine(n, error="JSON nested too deeply (a FAQ record is a flat object)"))
            continue
        if not isinstance(record, dict):
            rows.append(JsonlLine(n, error="not a JSON object"))
            continue
        rows.append(JsonlLine(n, record=record))
    return rows


def entry_of(record: dict[str, Any]) -> FaqEntry:
    """A faq.jsonl record as an entry; `InvalidFaq` names the field."""
    if unknown := sorted(set(record) - RECORD_FIELDS):
        raise InvalidFaq(f"unknown field(s) {unknown}; fields are {', '.join(RECORD_KEYS)}")
    record = dict(record)
    if "id" in record:
        if "faq_id" in record and record["faq_id"] != record["id"]:
            raise InvalidFaq("id and faq_id differ")
        record["faq_id"] = record.pop("id")
    return FaqEntry(**record)


def read_faq_jsonl(path: str | Path) -> list[FaqEntry]:
    """Entries of a faq.jsonl file. The first bad line raises `InvalidFaq` naming the line."""
    entries = []
    for line in parse_faq_jsonl(Path(path).read_text("utf-8")):
        try:
            if line.error is not None:
                raise InvalidFaq(line.error)
            entries.append(entry_of(line.record or {}))
        except InvalidFaq as e:
            raise InvalidFaq(f"{path}:{line.row}: {e.message}") from None
    return entries


def kb_terms(entries: Iterable[FaqEntry]) -> list[str]:
    """The knowledge base's tags (product and policy terms such as 顺丰, 增值税专用发票), for a jieba user
    dictionary so BM25 keeps them as whole tokens."""
    return sorted({t for e in entries for t in e.tags})
