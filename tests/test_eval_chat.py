"""`make eval-chat`'s accounting: which answer counts towards which rate, and the chat set's own checks."""

from __future__ import annotations

import json

import pytest

from bench.eval_chat import CHAT_SET, near_copies, read_chat_set, report


def answer(action, faqs=(), reason=None, intent=None):
    return {
        "action": action,
        "faq_hits": [{"faq_id": f} for f in faqs],
        "handoff_reason": reason,
        "intent": {"label": intent} if intent else None,
    }


def test_rates_count_each_outcome_once():
    rows = [
        {"id": "a1", "text": "x", "kind": "answerable", "faq_id": "f1", "intent": "退款"},
        {"id": "a2", "text": "x", "kind": "answerable", "faq_id": "f1", "intent": "退款"},
        {"id": "a3", "text": "x", "kind": "answerable", "faq_id": "f1", "intent": "退款"},
        {"id": "a4", "text": "x", "kind": "answerable", "faq_id": "f1", "intent": "退款"},
        {"id": "u1", "text": "x", "kind": "unanswerable", "faq_id": None, "intent": None},
        {"id": "g1", "text": "x", "kind": "angry", "faq_id": None, "intent": "投诉"},
        {"id": "n1", "text": "x", "kind": "neutral", "faq_id": None, "intent": None},
        {"id": "n2", "text": "x", "kind": "neutral", "faq_id": None, "intent": None},
    ]
    answers = [
        answer("answer", ["f1"], intent="退款"),  # direct and right
        answer("suggest", ["f2", "f1"], intent="退换货"),  # reached through a suggestion
        answer("answer", ["f2"], intent="退款"),  # a wrong answer
        answer("handoff", reason="complaint", intent="投诉"),
        answer("answer", ["f9"]),  # answered although the KB does not cover it
        answer("handoff", reason="negative_sentiment", intent="投诉"),
        answer("handoff", reason="negative_sentiment"),
        answer("handoff", reason="requested_human"),  # not a sentiment hand-over
    ]
    r = report(rows, answers)
    values = {name: rate["value"] for name, rate in r["rates"].items()}
    assert values == {
        "direct_correct": 0.25,
        "reached": 0.5,
        "wrong_answer": 0.25,
        "handoff": 0.25,
        "unanswerable_answered": 1.0,
        "angry_handoff": 1.0,
        "neutral_sentiment_handoff": 0.5,
    }
    assert r["rates"]["direct_correct"]["met"] is False and r["rates"]["angry_handoff"]["met"] is True
    assert r["intent_confusion"]["退款"]["predicted"] == {"退款": 2, "退换货": 1, "投诉": 1}
    assert r["intent_confusion"]["退款"]["correct"] == 0.5


def test_the_shipped_chat_set_is_complete_and_written_not_copied():
    from services.faq.domain import phrasing_key
    from services.faq.testing import load_demo_kb

    rows = read_chat_set(CHAT_SET)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("answerable", "unanswerable", "angry", "neutral")}
    assert len(rows) >= 300 and kinds["answerable"] >= 180 and min(kinds.values()) >= 40
    kb = load_demo_kb()
    assert {r["faq_id"] for r in rows if r["kind"] == "answerable"} == {e.faq_id for e in kb}
    phrasings = {phrasing_key(p) for e in kb for p in e.phrasings}
    assert not [r["text"] for r in rows if phrasing_key(r["text"]) in phrasings]


def test_a_malformed_row_is_named(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"text": "运费多少", "kind": "answerable"}, ensure_ascii=False) + "\n", "utf-8"
    )
    with pytest.raises(ValueError, match=r"chat.jsonl:1: answerable rows"):
        read_chat_set(path)


def test_near_copies_of_training_texts_are_found_and_left_out_of_the_second_rates(tmp_path):
    kb = tmp_path / "faq.jsonl"
    kb.write_text(
        json.dumps({"question": "退款多久到账？", "alternatives": ["退款能退到别的卡吗"]}, ensure_ascii=False)
        + "\n",
        "utf-8",
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"text_a": "积分会过期吗", "text_b": "运费谁出"}, ensure_ascii=False) + "\n", "utf-8"
    )
    rows = [
        {"id": "a1", "text": "退款能退到别的卡上吗", "kind": "answerable", "faq_id": "f1"},  # 0.7 alike
        {"id": "a2", "text": "我的积分会过期吗", "kind": "answerable", "faq_id": "f2"},  # 5 of 7 bigrams
        {"id": "a3", "text": "换了新手机号 账号怎么换绑", "kind": "answerable", "faq_id": "f3"},
    ]
    near = near_copies(rows, (kb, pairs))
    assert set(near) == {"a1", "a2"}
    assert near["a1"] == (0.7, "退款能退到别的卡吗")
    answers = [answer("answer", ["f1"]), answer("answer", ["f2"]), answer("suggest", ["f3"])]
    r = report(rows, answers, near)
    assert r["rates"]["direct_correct"]["value"] == round(2 / 3, 4)
    assert r["rates_without_near_copies"]["direct_correct"] == {
        "value": 0.0,
        "n": 1,
        "target": 0.8,
        "met": False,
    }
    assert r["near_copies"]["messages"]["a2"][1] == "积分会过期吗"
