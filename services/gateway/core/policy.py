"""The decision policy of `POST /v1/chat`: from the model signals of one turn to one action a support flow can
act on. Pure logic (no I/O): `decide(policy, thresholds, signals)`. Configured by `defaults/policy.yaml`.

The rules, first match wins:
0. the message asks for a person in so many words (`intent.human_request_markers`: 转人工, 人工客服, 真人 ...)
                                                                           → handoff, requested_human
   (the intent model usually knows 转人工, but an angry "你们到底有没有真人客服" reads as a complaint, and a
   complaint-process FAQ would answer it; a customer who asks for a human gets one)
1. the intent is one of `intent.handoff` (e.g. 投诉 → complaint, 转人工 → requested_human) with probability at
   least `intent.handoff_min_confidence`                                    → handoff, reason from the table
   — unless `intent.answer_handoff_faqs` and the best FAQ is an answer (rule 3) of that very category
     (the knowledge base answers "在哪投诉快递员": the customer gets that answer, not a queue; when the message
     asks a question (`intent.question_markers`) rule 2 does not overrule it either: a question about how to
     complain reads negative by nature, while "我要投诉！态度恶劣" states a complaint and still goes to a human,
     and so does an exasperated rhetorical one, `intent.rhetorical_markers`: "到底有没有人管")
2. P(negative sentiment) >= the sentiment threshold of the version that answered
   (`sentiment.negative_handoff_at_version`, else `sentiment.negative_handoff_at`) → handoff, negative_sentiment
3. the best FAQ's score >= the answer threshold                            → answer with that FAQ
4. this turn would be the `session.max_unresolved_turns`-th in a row without an answer
                                                                           → handoff, unresolved_turns
5. FAQs scoring >= the suggest threshold                                   → suggest up to `faq.max_suggestions`
6. otherwise                                                               → clarify (a question specific to the
   intent when the intent model is at least `intent.clarify_below` sure and the intent has one, else generic)

The FAQ score is the **answer confidence** when the encoder version's calibration has one
(`services/faq/confidence.py`: P(this FAQ is right) from cosine, margin, hybrid score, intent agreement and
shared words; `services/faq/thresholds.py` fits it and picks answer / suggest for a stated precision of direct
answers): hits are ranked by it, the best one answers. Without one (an old calibration, or none) the score is
the cosine between the query and the FAQ's best phrasing, with the calibration's or this file's thresholds.

Degraded turns use the same rules on what is known: without the intent model rules 1 and the intent-specific
clarify are skipped (FAQ-only); without sentiment, rule 2; without the knowledge base, rules 3 and 5 (so the
turn ends in clarify or handoff). With the encoder down but the store up, the hits come from BM25 alone
(`faq_keywords_only`) and rules 3 and 5 use `faq.keywords_answer` / `faq.keywords_suggest` on the normalised
BM25 score (`Thresholds.keywords`): chosen on `data/chat_eval/chat_dev.jsonl` with the in-memory store's
bigram BM25, 0.97 answered 38 of 314 turns with precision 0.97 and at 0.95 the right FAQ was among the
suggestions for 87 % of the 135 turns; with the 598 alternatives of 2026-12-06, 0.97 answers 62 turns at
precision 0.935 (of the 4 wrong, one angry message the sentiment rule hands over first and one uncovered
question the KB holds nearly word for word; no higher threshold does better: the top BM25 scores are short
exact phrasings) and at 0.95 the right FAQ is among the suggestions for 96 % of 143 answerable turns
(recalibrate for another analyser, e.g. Milvus' own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.faq.confidence import AnswerConfidence
from services.faq.domain import FaqHit
from services.gateway.clients.inference import ClassPrediction


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaqPolicy(_Strict):
    answer: float = Field(0.8, ge=0, le=1, description="fallback answer threshold (cosine)")
    suggest: float = Field(0.6, ge=0, le=1, description="fallback suggest threshold (cosine)")
    max_suggestions: int = Field(3, ge=1, le=10)
    keywords_answer: float = Field(
        0.97,
        ge=0,
        le=1,
        description="answer threshold when the encoder is down (BM25 only, normalised score)",
    )
    keywords_suggest: float = Field(
        0.95,
        ge=0,
        le=1,
        description="suggest threshold when the encoder is down (BM25 only, normalised score)",
    )


class IntentPolicy(_Strict):
    clarify_below: float = Field(0.45, ge=0, le=1)
    handoff: dict[str, str] = Field(
        default_factory=lambda: {"投诉": "complaint", "转人工": "requested_human"}
    )
    handoff_min_confidence: float = Field(0.5, ge=0, le=1)
    answer_handoff_faqs: bool = Field(
        True, description="a confident FAQ answer of the hand-over intent's own category answers instead"
    )
    human_request_markers: list[str] = Field(
        default_factory=lambda: ["转人工", "人工客服", "人工服务", "找人工", "要人工", "真人", "活人"],
        description="a message holding one of these asks for a person: handoff (requested_human) before any "
        "other rule; [] turns the rule off",
    )
    question_markers: list[str] = Field(
        default_factory=lambda: [
            "?", "？", "怎么", "怎样", "如何", "哪", "多久", "多长", "为什么", "为啥", "咋", "能不能",
            "可不可以", "可以", "是否", "有没有",
        ],
        description="a message holding one of these (or ending in 吗 / 么 / 呢) asks a question: a "
        "complaint-process question answered by its FAQ is answered even in a negative tone; a complaint stated "
        "without one goes to a human",
    )  # fmt: skip
    rhetorical_markers: list[str] = Field(
        default_factory=lambda: ["到底", "究竟", "凭什么"],
        description="a message holding one of these is exasperated, not asking (到底有没有人管, 凭什么不给退): it "
        "never counts as a question, so a negative tone hands it over",
    )


class SentimentPolicy(_Strict):
    negative_handoff_at: float = Field(0.98, ge=0, le=1)
    negative_handoff_at_version: dict[str, float] = Field(
        default_factory=dict, description="per sentiment model version (its own calibration)"
    )

    @model_validator(mode="after")
    def _check(self) -> SentimentPolicy:
        for version, at in self.negative_handoff_at_version.items():
            if not 0 <= at <= 1:
                raise ValueError(f"negative_handoff_at_version.{version}: {at} is not a probability")
        return self

    def threshold(self, version: str | None) -> float:
        """The P(negative) at which a turn answered by `version` of the sentiment model is handed over."""
        return self.negative_handoff_at_version.get(str(version), self.negative_handoff_at)


class SessionPolicy(_Strict):
    max_unresolved_turns: int = Field(3, ge=1)


class Templates(_Strict):
    answer: str = "{answer}"
    suggest: str = "您是不是想问以下问题？\n{suggestions}"
    suggestion_line: str = "{n}. {question}"
    clarify: str = "抱歉，我没有完全理解您的意思，能再具体描述一下吗？"
    clarify_by_intent: dict[str, str] = Field(default_factory=dict)
    handoff: dict[str, str] = Field(default_factory=dict)
    handoff_default: str = "正在为您转接人工客服，请稍候。"


class Policy(_Strict):
    faq: FaqPolicy = FaqPolicy()
    intent: IntentPolicy = IntentPolicy()
    sentiment: SentimentPolicy = SentimentPolicy()
    session: SessionPolicy = SessionPolicy()
    templates: Templates = Templates()

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if self.faq.suggest > self.faq.answer:
            raise ValueError(
                f"faq.suggest ({self.faq.suggest}) must not exceed faq.answer ({self.faq.answer})"
            )
        if self.faq.keywords_suggest > self.faq.keywords_answer:
            raise ValueError(
                f"faq.keywords_suggest ({self.faq.keywords_suggest}) must not exceed faq.keywords_answer "
                f"({self.faq.keywords_answer})"
            )
        t = self.templates
        sample = {"answer": "A", "question": "Q", "suggestions": "S", "n": 1}
        checks = {"answer": t.answer, "suggest": t.suggest, "suggestion_line": t.suggestion_line}
        checks |= {"clarify": t.clarify, "handoff_default": t.handoff_default}
        checks |= {f"clarify_by_intent.{k}": v for k, v in t.clarify_by_intent.items()}
        checks |= {f"handoff.{k}": v for k, v in t.handoff.items()}
        for where, text in checks.items():
            try:
                text.format(**sample)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"templates.{where}: bad placeholder {e} (allowed: {sorted(sample)})"
                ) from None
        return self

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """From YAML; a missing file, an unknown key or a broken template raises ValueError naming it."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text("utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"policy file {path}: {e}") from None
        try:
            return cls.model_validate(data)
        except ValueError as e:
            raise ValueError(f"policy file {path}: {e}") from None


@dataclass(frozen=True)
class Thresholds:
    answer: float
    suggest: float
    source: str  # "calibrated:<encoder version>" or "policy"
    confidence: AnswerConfidence | None = None  # None: answer / suggest apply to the cosine

    @classmethod
    def keywords(cls, policy: Policy) -> Thresholds:
        """The thresholds of BM25-only hits (the encoder is down): the policy's own, no answer confidence."""
        return cls(policy.faq.keywords_answer, policy.faq.keywords_suggest, "keywords")

    def describe(self) -> dict:
        """For readiness: the thresholds, their source and, when they apply to it, the answer confidence."""
        out: dict = {"answer": self.answer, "suggest": self.suggest, "source": self.source}
        if self.confidence is not None:
            out["confidence"] = self.confidence.to_dict()
        return out


@dataclass
class Signals:
    """What the models said about one turn; None = that upstream is down (degraded)."""

    intent: ClassPrediction | None
    negative: float | None  # P(negative sentiment)
    hits: list[FaqHit] | None
    unresolved: int = 0  # consecutive turns before this one that did not end in an answer
    text: str = ""  # the customer's message (the answer confidence compares its words with the FAQs')
    sentiment_version: str | None = None  # the sentiment model version that answered


@dataclass
class Decision:
    action: str  # answer | suggest | clarify | handoff
    reply: str
    handoff_reason: str | None = None
    hits: list[FaqHit] = field(default_factory=list)  # the answer's FAQ, or the suggestions
    score: float | None = None  # the best FAQ's score (answer confidence, or cosine) when there were hits


def faq_score(hit: FaqHit) -> float:
    """The score thresholds apply to: the cosine when the search used a vector, else the mode's score."""
    return hit.cosine if hit.cosine is not None else hit.score


def rank(thresholds: Thresholds, s: Signals) -> list[tuple[FaqHit, float]]:
    """The hits with the score the thresholds apply to, best first (ties keep the store's order)."""
    hits = list(s.hits or [])
    if thresholds.confidence is None:
        scores = [faq_score(h) for h in hits]
    else:
        label, sure = (s.intent.label, s.intent.confidence) if s.intent is not None else (None, 0.0)
        scores = thresholds.confidence.probabilities(hits, s.text, label, sure)
    return sorted(zip(hits, scores, strict=True), key=lambda pair: -pair[1])


def decide(policy: Policy, thresholds: Thresholds, s: Signals) -> Decision:
    t = policy.templates
    intent = s.intent
    ranked = rank(thresholds, s)
    best = ranked[0][1] if ranked else None
    if asks_for_human(policy, s.text):
        return _handoff(policy, "requested_human", best)
    answer = ranked[0][0] if ranked and best >= thresholds.answer else None
    if intent is not None and intent.confidence >= policy.intent.handoff_min_confidence:
        reason = policy.intent.handoff.get(intent.label)
        answered = (
            policy.intent.answer_handoff_faqs and answer is not None and answer.category == intent.label
        )
        if reason and not answered:
            return _handoff(policy, reason, best)
        if reason and answered and asks_question(policy, s.text):
            # a question about the complaint process reads negative by nature: rule 2 does not overrule its answer
            reply = t.answer.format(answer=answer.answer, question=answer.question)
            return Decision("answer", reply, hits=[answer], score=best)
    if s.negative is not None and s.negative >= policy.sentiment.threshold(s.sentiment_version):
        return _handoff(policy, "negative_sentiment", best)
    if answer is not None:
        reply = t.answer.format(answer=answer.answer, question=answer.question)
        return Decision("answer", reply, hits=[answer], score=best)
    if s.unresolved + 1 >= policy.session.max_unresolved_turns:
        return _handoff(policy, "unresolved_turns", best)
    band = [h for h, score in ranked if score >= thresholds.suggest][: policy.faq.max_suggestions]
    if band:
        lines = "\n".join(t.suggestion_line.format(n=i, question=h.question) for i, h in enumerate(band, 1))
        return Decision("suggest", t.suggest.format(suggestions=lines), hits=band, score=best)
    reply = t.clarify
    if intent is not None and intent.confidence >= policy.intent.clarify_below:
        reply = t.clarify_by_intent.get(intent.label, t.clarify)
    return Decision("clarify", reply, score=best)


QUESTION_PARTICLES = (
    "吗",
    "么",
    "呢",
)  # sentence-final: 什么 / 怎么 inside a message are not questions by themselves


def _holds_any(text: str, markers: list[str]) -> bool:
    return any(marker in text for marker in markers)


def asks_for_human(policy: Policy, text: str) -> bool:
    return _holds_any(text, policy.intent.human_request_markers)


def asks_question(policy: Policy, text: str) -> bool:
    if _holds_any(text, policy.intent.rhetorical_markers):
        return False
    if text.rstrip(" \t\n。！!～~.…").endswith(QUESTION_PARTICLES):
        return True
    return _holds_any(text, policy.intent.question_markers)


def _handoff(policy: Policy, reason: str, score: float | None = None) -> Decision:
    t = policy.templates
    return Decision("handoff", t.handoff.get(reason, t.handoff_default), handoff_reason=reason, score=score)
