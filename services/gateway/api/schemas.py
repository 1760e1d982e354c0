"""Wire types of the public API v1 (what the OpenAPI document shows). Only the wire format lives here.

Text limits (length, list size) are the edge's (`KEFU_GATEWAY_MAX_TEXT_CHARS`, `KEFU_GATEWAY_MAX_LIST_SIZE`):
they are checked after normalisation and answer 400 naming the offending index, the same for one text and a
list.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["answer", "suggest", "clarify", "handoff"]
TextOrList = str | list[str]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatRequest(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "session_id": "sess-20240601-0001",
                    "text": "我的快递三天了还没到，订单号 2024060112345",
                    "user_id": "u-1001",
                    "channel": "app",
                },
                {"session_id": "sess-20240601-0002", "text": "七天无理由退货怎么申请？"},
            ]
        },
    )
    session_id: str = Field(
        description="conversation id chosen by the client: 1-128 letters, digits, _ . : -",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
    )
    text: str = Field(description="the customer's message (normalised, sensitive words masked)")
    user_id: str | None = Field(
        None, max_length=128, description="the customer's id in the client app (logged only)"
    )
    channel: str | None = Field(
        None, max_length=32, description="where the message came from: app, web, wechat …"
    )


class TextsRequest(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": "我要投诉你们的快递员"}, {"text": ["怎么申请退款", "优惠券怎么用"]}]
        },
    )
    text: TextOrList = Field(description="one text, or a list of texts (up to the configured list size)")


class FaqSearchRequest(_In):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "运费怎么算", "top_k": 3}]}
    )
    text: TextOrList = Field(description="one query, or a list of queries")
    top_k: int = Field(3, ge=1, le=20, description="FAQs per query")


class IntentOut(BaseModel):
    label: str = Field(description="top intent, e.g. 物流查询")
    confidence: float = Field(description="its calibrated probability")


class SentimentOut(BaseModel):
    label: str = Field(description="positive or negative")
    score: float = Field(description="probability of `label`")
    negative: float = Field(description="probability of negative (what the hand-over rule compares)")


class FaqHitOut(BaseModel):
    faq_id: str
    question: str = Field(description="the standard question")
    answer: str
    category: str
    matched_text: str = Field(description="the phrasing that matched best")
    score: float = Field(description="cosine of query and that phrasing (the scale the thresholds use)")


class ChatResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "request_id": "5f0c7e0e-3b0e-4f0e-9a7c-1d2b3c4d5e6f",
                "session_id": "sess-20240601-0002",
                "reply": "签收后7天内，商品完好且不影响二次销售可申请七天无理由退货……",
                "action": "answer",
                "intent": {"label": "退换货", "confidence": 0.93},
                "sentiment": {"label": "positive", "score": 0.71, "negative": 0.29},
                "faq_hits": [],
                "handoff_reason": None,
                "model_versions": {"intent": "2", "sentiment": "2", "faq": "2"},
                "degraded": [],
                "slots": {},
                "pii_detected": [],
            }
        }
    )
    request_id: str
    session_id: str
    reply: str = Field(description="text to show the customer (templates in the policy file)")
    action: Action = Field(description="answer | suggest | clarify | handoff")
    intent: IntentOut | None = Field(description="null when the intent model is down")
    sentiment: SentimentOut | None = Field(description="null when the sentiment model is down")
    faq_hits: list[FaqHitOut] = Field(description="the FAQ answered with, or the suggestions")
    handoff_reason: str | None = Field(
        description="complaint | requested_human | negative_sentiment | unresolved_turns (policy file)"
    )
    model_versions: dict[str, str] = Field(description="version of each model that answered")
    degraded: list[str] = Field(description="faq_down / intent_down / sentiment_down when an upstream failed")
    slots: dict[str, str] = Field(description="session slots extracted by rule (order_no, masked phone)")
    pii_detected: list[Literal["resident_id", "bank_card"]] = Field(
        default_factory=list,
        description="personal numbers seen in this text (resident ID, bank card): never stored or echoed; "
        "the app may ask the customer not to send them",
    )


class IntentResponse(BaseModel):
    request_id: str
    model_version: str
    results: list[IntentOut] = Field(description="one per text, in order (one for a single text)")


class SentimentResponse(BaseModel):
    request_id: str
    model_version: str
    results: list[SentimentOut]


class FaqSearchResult(BaseModel):
    hits: list[FaqHitOut]


class FaqSearchResponse(BaseModel):
    request_id: str
    model_version: str = Field(description="FAQ encoder version")
    results: list[FaqSearchResult] = Field(description="one per query, in order")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable snake_case token, e.g. text_too_long, rate_limited")
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class ReadinessSummary(BaseModel):
    """The public port's /readyz: the status only (the detailed answer is on the internal port)."""

    status: Literal["ready", "degraded", "unavailable"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unavailable"]
    upstreams: dict = Field(description="per role: model, version, replicas (up, circuit)")
    knowledge_base: dict = Field(description="ready, encoder version, thresholds, error")
