"""The decision policy: every rule, its order, degraded inputs, and the policy file's validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.faq.domain import FaqHit
from services.gateway.clients.inference import ClassPrediction
from services.gateway.core.policy import Policy, Signals, Thresholds, decide
from services.gateway.settings import DEFAULTS

POLICY = Policy.load(DEFAULTS / "policy.yaml")
TH = Thresholds(answer=0.8, suggest=0.6, source="test")


def hit(faq_id: str, cosine: float, question: str = "运费怎么算？") -> FaqHit:
    return FaqHit(
        faq_id=faq_id, question=question, answer=f"答案{faq_id}", category="物流查询", matched_text=question,
        matched_standard=True, score=max(0.0, cosine), source="hybrid", cosine=cosine,
    )  # fmt: skip


def intent(label: str, p: float = 0.9) -> ClassPrediction:
    return ClassPrediction(label, p, {label: p})


def test_answer_when_the_top_faq_clears_the_answer_threshold():
    d = decide(POLICY, TH, Signals(intent("物流查询"), 0.1, [hit("f1", 0.7), hit("f2", 0.85)]))
    assert d.action == "answer" and d.reply == "答案f2" and [h.faq_id for h in d.hits] == ["f2"]


def test_suggest_up_to_three_in_the_band_numbered_in_the_template():
    hits = [hit(f"f{i}", 0.75 - i * 0.02, f"问题{i}") for i in range(5)] + [hit("low", 0.3)]
    d = decide(POLICY, TH, Signals(intent("商品咨询"), 0.1, hits))
    assert d.action == "suggest" and [h.faq_id for h in d.hits] == ["f0", "f1", "f2"]
    assert "1. 问题0" in d.reply and "3. 问题2" in d.reply and "问题3" not in d.reply


@pytest.mark.parametrize("label,reason", [("投诉", "complaint"), ("转人工", "requested_human")])
def test_handoff_intents_win_even_over_a_perfect_faq(label, reason):
    d = decide(POLICY, TH, Signals(intent(label), 0.1, [hit("f1", 0.99)]))
    assert d.action == "handoff" and d.handoff_reason == reason and "人工" in d.reply


def test_an_unsure_handoff_intent_does_not_hand_over():
    d = decide(POLICY, TH, Signals(intent("投诉", 0.3), 0.1, [hit("f1", 0.9)]))
    assert d.action == "answer"


def test_strongly_negative_sentiment_hands_over():
    at = POLICY.sentiment.negative_handoff_at
    d = decide(POLICY, TH, Signals(intent("物流查询"), at, [hit("f1", 0.9)]))
    assert (d.action, d.handoff_reason) == ("handoff", "negative_sentiment")
    assert decide(POLICY, TH, Signals(intent("物流查询"), at - 0.01, [hit("f1", 0.9)])).action == "answer"


def test_low_intent_confidence_clarifies_generically():
    d = decide(POLICY, TH, Signals(intent("其他/闲聊", 0.2), 0.1, [hit("f1", 0.3)]))
    assert d.action == "clarify" and d.reply == POLICY.templates.clarify


def test_a_clear_intent_without_an_answer_asks_the_intents_question():
    d = decide(POLICY, TH, Signals(intent("物流查询", 0.9), 0.1, []))
    assert d.action == "clarify" and d.reply == POLICY.templates.clarify_by_intent["物流查询"]


def test_n_unresolved_turns_hand_over_unless_this_turn_is_answered():
    n = POLICY.session.max_unresolved_turns
    d = decide(POLICY, TH, Signals(intent("商品咨询"), 0.1, [hit("f1", 0.7)], unresolved=n - 1))
    assert (d.action, d.handoff_reason) == ("handoff", "unresolved_turns")
    assert (
        decide(POLICY, TH, Signals(intent("商品咨询"), 0.1, [hit("f1", 0.7)], unresolved=n - 2)).action
        == "suggest"
    )
    assert (
        decide(POLICY, TH, Signals(intent("商品咨询"), 0.1, [hit("f1", 0.9)], unresolved=n + 5)).action
        == "answer"
    )


def test_degraded_inputs_faq_only_and_no_faq():
    # intent down: FAQ-only
    assert decide(POLICY, TH, Signals(None, None, [hit("f1", 0.9)])).action == "answer"
    d = decide(POLICY, TH, Signals(None, 0.1, []))
    assert d.action == "clarify" and d.reply == POLICY.templates.clarify
    # knowledge base down: clarify or handoff from intent and sentiment
    assert decide(POLICY, TH, Signals(intent("转人工"), 0.1, None)).action == "handoff"
    assert decide(POLICY, TH, Signals(intent("退款"), 0.1, None)).action == "clarify"


def test_bm25_hits_without_cosine_use_their_score():
    h = FaqHit(
        faq_id="f", question="q", answer="a", category="", matched_text="q", matched_standard=True,
        score=0.9, source="bm25", bm25=12.0,
    )  # fmt: skip
    assert decide(POLICY, TH, Signals(None, None, [h])).action == "answer"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text, "utf-8")
    return p


def test_policy_file_refuses_unknown_keys_broken_templates_and_inverted_thresholds(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        Policy.load(write(tmp_path, "faq:\n  answr: 0.9\n"))
    with pytest.raises(ValueError, match="templates.clarify.*bad placeholder"):
        Policy.load(write(tmp_path, "templates:\n  clarify: '请提供{order}'\n"))
    with pytest.raises(ValueError, match="must not exceed"):
        Policy.load(write(tmp_path, "faq:\n  answer: 0.5\n  suggest: 0.7\n"))
    with pytest.raises(ValueError, match="policy file"):
        Policy.load(tmp_path / "missing.yaml")


def test_templates_and_thresholds_are_configuration(tmp_path):
    p = Policy.load(
        write(
            tmp_path, "templates:\n  answer: '您好，{answer}'\nintent:\n  handoff:\n    退款: refund_desk\n"
        )
    )
    assert decide(p, TH, Signals(None, None, [hit("f1", 0.9)])).reply == "您好，答案f1"
    d = decide(p, TH, Signals(intent("退款"), 0.1, None))
    assert (d.action, d.handoff_reason, d.reply) == ("handoff", "refund_desk", p.templates.handoff_default)
    assert decide(p, TH, Signals(intent("投诉"), 0.1, None)).action == "clarify"  # the table was replaced


# ── the answer confidence (issue 12) ────────────────────────────────────────────────────────────────


def conf_model(**weights: float):
    """A hand-set confidence model: the named feature weights, the rest 0."""
    from services.faq.confidence import FEATURES, AnswerConfidence

    return AnswerConfidence(tuple(weights.get(f, 0.0) for f in FEATURES), weights.get("bias", 0.0))


def kb_hit(faq_id: str, cosine: float, question: str, answer: str, category: str, score: float) -> FaqHit:
    return FaqHit(
        faq_id=faq_id, question=question, answer=answer, category=category, matched_text=question,
        matched_standard=True, score=score, source="hybrid", cosine=cosine,
    )  # fmt: skip


REPAIR = kb_hit("faq-022", 0.86, "商品坏了怎么申请保修或维修？", "可在订单页申请维修。", "退换货", 0.98)
SHIPPING = kb_hit("faq-009", 0.90, "运费怎么收？满多少包邮？", "满99元包邮。", "物流查询", 0.95)


def test_the_confidence_ranks_the_hits_and_the_most_probable_faq_answers():
    # the raw cosine prefers the shipping FAQ; the words the message shares with the repair FAQ and the
    # intent's agreement with its category make the repair FAQ the probable answer
    model = conf_model(overlap_faq_chars=6.0, intent_agrees=3.0, intent_disagrees=-3.0, bias=-4.0)
    th = Thresholds(0.6, 0.2, "calibrated:test", model)
    s = Signals(intent("退换货"), 0.1, [SHIPPING, REPAIR], text="耳机坏了能修吗")
    d = decide(POLICY, th, s)
    assert d.action == "answer" and [h.faq_id for h in d.hits] == ["faq-022"]
    assert d.score is not None and d.score >= 0.6
    # by cosine alone (no confidence model) the same hits answer with the shipping FAQ
    assert decide(POLICY, Thresholds(0.88, 0.6, "policy"), s).hits[0].faq_id == "faq-009"


def test_below_the_answer_confidence_the_suggestions_are_ordered_by_it():
    model = conf_model(overlap_faq_chars=6.0, intent_agrees=3.0, intent_disagrees=-3.0, bias=-4.0)
    th = Thresholds(0.99, 0.0001, "calibrated:test", model)
    d = decide(POLICY, th, Signals(intent("退换货"), 0.1, [SHIPPING, REPAIR], text="耳机坏了能修吗"))
    assert d.action == "suggest" and [h.faq_id for h in d.hits] == ["faq-022", "faq-009"]


COMPLAINT_FAQ = kb_hit("faq-059", 0.9, "如何投诉快递员或配送服务？", "在订单页投诉。", "投诉", 0.99)


def test_a_confident_faq_of_the_handoff_intents_category_answers_instead_of_handing_over():
    th = Thresholds(0.8, 0.6, "test")
    d = decide(POLICY, th, Signals(intent("投诉"), 0.1, [COMPLAINT_FAQ], text="快递员骂人在哪投诉"))
    assert d.action == "answer" and d.hits[0].faq_id == "faq-059"
    # not sure enough of the FAQ, or a FAQ of another category, or the rule switched off: hand over
    assert (
        decide(POLICY, Thresholds(0.95, 0.6, "test"), Signals(intent("投诉"), 0.1, [COMPLAINT_FAQ])).action
        == "handoff"
    )
    assert decide(POLICY, th, Signals(intent("投诉"), 0.1, [hit("f1", 0.99)])).handoff_reason == "complaint"
    off = POLICY.model_copy(
        update={"intent": POLICY.intent.model_copy(update={"answer_handoff_faqs": False})}
    )
    assert decide(off, th, Signals(intent("投诉"), 0.1, [COMPLAINT_FAQ])).handoff_reason == "complaint"


def test_a_complaint_answered_by_its_faq_is_not_handed_over_for_its_negative_tone():
    th = Thresholds(0.8, 0.6, "test")
    angry = POLICY.sentiment.negative_handoff_at  # as negative as a complaint gets
    d = decide(POLICY, th, Signals(intent("投诉"), angry, [COMPLAINT_FAQ], text="快递员骂人 在哪投诉"))
    assert d.action == "answer" and d.hits[0].faq_id == "faq-059"
    # the same complaint stated, not asked: the negative tone hands it over
    stated = decide(
        POLICY, th, Signals(intent("投诉"), angry, [COMPLAINT_FAQ], text="快递员骂人！我要投诉！")
    )
    assert stated.handoff_reason == "negative_sentiment"
    rhetorical = Signals(
        intent("投诉"), angry, [COMPLAINT_FAQ], text="快递员骂人 什么态度"
    )  # 什么: no question
    assert decide(POLICY, th, rhetorical).handoff_reason == "negative_sentiment"
    exasperated = Signals(
        intent("投诉"), angry, [COMPLAINT_FAQ], text="气死了 到底有没有人管"
    )  # 有没有, but 到底
    assert decide(POLICY, th, exasperated).handoff_reason == "negative_sentiment"
    particle = Signals(intent("投诉"), angry, [COMPLAINT_FAQ], text="快递员骂人能投诉吗。")
    assert decide(POLICY, th, particle).action == "answer"
    calm = decide(POLICY, th, Signals(intent("投诉"), 0.1, [COMPLAINT_FAQ], text="快递员骂人，我要投诉"))
    assert calm.action == "answer"
    # the same tone on another topic still hands over; so does a complaint the KB cannot answer
    other = decide(POLICY, th, Signals(intent("物流查询"), angry, [hit("f1", 0.9)]))
    assert other.handoff_reason == "negative_sentiment"
    unanswered = decide(POLICY, th, Signals(intent("投诉"), angry, [hit("f1", 0.99)]))
    assert unanswered.handoff_reason == "complaint"


def test_asking_for_a_person_hands_over_whatever_the_models_say():
    th = Thresholds(0.8, 0.6, "test")
    # read as a complaint with a confident complaint-process FAQ and a question marker (有没有): without the
    # rule the FAQ would answer an angry customer who asked for a human
    angry = Signals(intent("投诉"), 0.98, [COMPLAINT_FAQ], text="你们到底有没有真人客服 气死了")
    d = decide(POLICY, th, angry)
    assert (d.action, d.handoff_reason) == ("handoff", "requested_human")
    calm = Signals(intent("物流查询"), 0.01, [hit("f1", 0.99)], text="麻烦帮我转人工")
    assert decide(POLICY, th, calm).handoff_reason == "requested_human"
    # the same words without a request for a person: the FAQ answers
    plain = Signals(intent("物流查询"), 0.01, [hit("f1", 0.99)], text="运费怎么算")
    assert decide(POLICY, th, plain).action == "answer"
    off = POLICY.model_copy(update={"intent": POLICY.intent.model_copy(update={"human_request_markers": []})})
    assert decide(off, th, calm).action == "answer"


def test_each_sentiment_version_hands_over_at_its_own_threshold(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("sentiment:\n  negative_handoff_at: 0.99\n  negative_handoff_at_version: {'2': 0.6}\n")
    policy = Policy.load(path)
    th = Thresholds(0.8, 0.6, "test")
    v1 = Signals(intent("物流查询"), 0.7, [hit("f1", 0.9)], sentiment_version="1")
    v2 = Signals(intent("物流查询"), 0.7, [hit("f1", 0.9)], sentiment_version="2")
    assert decide(policy, th, v1).action == "answer"
    assert decide(policy, th, v2).handoff_reason == "negative_sentiment"
    path.write_text("sentiment:\n  negative_handoff_at_version: {'2': 1.5}\n")
    with pytest.raises(ValueError, match="negative_handoff_at_version.2"):
        Policy.load(path)


def test_the_shipped_sentiment_version_hands_over_at_its_calibrated_threshold():
    # a shipped sentiment version without its own entry would fall back to negative_handoff_at (0.99) silently:
    # every version the committed repository serves has the threshold its handoff.json proposes
    import json

    from services.runtime.repository import ModelRepository

    shipped = Path(__file__).resolve().parent.parent / "models" / "shipped"
    report = json.loads((shipped / "sentiment" / "handoff.json").read_text("utf-8"))
    served = ModelRepository(shipped).versions("sentiment")
    assert served and report["versions"]["sentiment"] == max(served)
    proposed = report["sentiment"]["proposed_threshold"]
    for version in served:
        assert POLICY.sentiment.negative_handoff_at_version.get(str(version)) == proposed


def test_the_reference_production_policy_keeps_the_shipped_versions_threshold():
    # the chart's production profile (and k8s/, rendered from it) replaces the default policy file whole: a
    # sentiment section without the per-version thresholds would hand v3 over at another P(negative)
    import json

    import yaml

    root = Path(__file__).resolve().parent.parent
    report = json.loads((root / "models" / "shipped" / "sentiment" / "handoff.json").read_text("utf-8"))
    version, proposed = str(report["versions"]["sentiment"]), report["sentiment"]["proposed_threshold"]
    profile = yaml.safe_load((root / "helm" / "ci" / "production.yaml").read_text("utf-8"))
    policy = Policy.model_validate(profile["gateway"]["policy"])
    assert policy.sentiment.threshold(version) == proposed
    rendered = yaml.safe_load(
        (root / "k8s" / "gateway" / "configmap-kefu-gateway-config.yaml").read_text("utf-8")
    )
    assert (
        Policy.model_validate(yaml.safe_load(rendered["data"]["policy.yaml"])).sentiment.threshold(version)
        == proposed
    )
