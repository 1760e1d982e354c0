"""The FAQ admin API's request and response bodies (its OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.faq.domain import FaqEntry, FaqHit, check_unicode
from services.faq.store import MAX_TOP_K

ImportFormat = Literal["jsonl", "csv"]
ImportMode = Literal["upsert", "replace_all"]


class FaqIn(BaseModel):
    """A FAQ as a client sends it. The rules (lengths, id pattern, one FAQ per phrasing) are `FaqEntry`'s;
    `updated_at` is set by the server."""

    model_config = ConfigDict(extra="forbid")

    faq_id: str = Field(description="stable id: letters, digits, _ . : - (at most 64)")
    question: str = Field(description="standard question (标准问)")
    answer: str = Field(description="standard answer shown to the customer")
    category: str = Field("", description="business category, e.g. 物流查询; empty = none")
    alternatives: list[str] = Field(default_factory=list, description="alternative phrasings (相似问)")
    tags: list[str] = Field(default_factory=list, description="keywords, e.g. 顺丰")

    def entry(self, faq_id: str | None = None) -> FaqEntry:
        """The domain entry (`InvalidFaq` naming the field when a rule is broken)."""
        return FaqEntry(**{**self.model_dump(), **({"faq_id": faq_id} if faq_id else {})})


class FaqUpdate(FaqIn):
    """A replacement of a FAQ; `faq_id` may be left out (it is the path's) but must match when given."""

    faq_id: str | None = Field(None, description="must equal the path's faq_id when given")


class FaqOut(BaseModel):
    faq_id: str
    question: str
    answer: str
    category: str
    alternatives: list[str]
    tags: list[str]
    updated_at: datetime

    @classmethod
    def of(cls, e: FaqEntry) -> FaqOut:
        return cls(**e.model_dump())


class FaqPage(BaseModel):
    items: list[FaqOut]
    total: int = Field(description="FAQs matching the filter, all pages")
    offset: int
    limit: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=1000, description="the customer's question")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="FAQs to return")
    mode: Literal["hybrid", "dense", "bm25"] = Field(
        "hybrid", description="hybrid falls back to dense where the store has no BM25"
    )

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_unicode(v, "text")


class SearchResponse(BaseModel):
    mode: str = Field(description="the mode asked for; each hit's `source` says what ran")
    hits: list[FaqHit]


class ImportReport(BaseModel):
    format: ImportFormat
    mode: ImportMode
    dry_run: bool
    rows: int = Field(description="FAQ records in the file")
    created: list[str]
    updated: list[str]
    unchanged: int = Field(description="records equal to the stored FAQ (not rewritten)")
    deleted: list[str] = Field(description="replace_all: stored FAQs absent from the file")
    faqs: int = Field(description="FAQs in the knowledge base afterwards")


class ReindexStatus(BaseModel):
    state: Literal["idle", "running", "succeeded", "failed"]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: dict[str, Any] | None = Field(None, description="`ReindexReport` of the last success")
    error: str | None = None
