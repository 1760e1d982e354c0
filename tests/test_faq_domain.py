"""FAQ domain rules, the demo knowledge base, the test embedders and score normalisation (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from services.faq.domain import FaqEntry, InvalidFaq, kb_terms, phrasing_key, read_faq_jsonl
from services.faq.scoring import HybridRanker, bm25_score, dense_score
from services.faq.testing import ConstantEmbedder, HashingEmbedder, load_demo_kb
from tests import demo_kb


def entry(**kw) -> FaqEntry:
    base = {
        "faq_id": "faq-1",
        "question": "可以开发票吗？",
        "answer": "可以，在订单详情页申请。",
        "category": "支付/账单",
    }
    return FaqEntry(**{**base, **kw})


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("question", "可以\ud800开发票吗", "question"),
        ("answer", "\udfff", "answer"),
        ("category", "支付\ud83d", "category"),
        ("alternatives", ["能开票吗", "\ud800"], "alternative 2"),
        ("tags", ["\udc80"], "tag"),
    ],
)
def test_text_with_a_lone_surrogate_is_refused_naming_the_field(field, value, named):
    with pytest.raises(InvalidFaq, match=f"{named} holds a lone surrogate"):
        entry(**{field: value})
    assert entry(question="表情😀可以吗").question == "表情😀可以吗"  # a real astral character is fine


def test_entry_is_cleaned():
    e = entry(question="  可以开发票吗？ ", alternatives=[" 能开票吗 "], tags=["发票", "发票", "电子发票"])
    assert e.question == "可以开发票吗？" and e.alternatives == ["能开票吗"]
    assert e.tags == ["发票", "电子发票"]
    assert e.phrasings == ["可以开发票吗？", "能开票吗"]
    assert e.updated_at.tzinfo is not None and e.updated_at.microsecond % 1000 == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": "   "}, "question is empty"),
        ({"answer": ""}, "answer is empty"),
        ({"question": "？？"}, "no letters or digits"),
        ({"alternatives": ["能开票吗", "能开票吗？"]}, "repeats"),
        ({"alternatives": ["可以开发票吗"]}, "repeats"),  # same as the standard question after folding
        ({"alternatives": [""]}, "alternative 1 is empty"),
        ({"question": "问" * 201}, "max 200"),
        ({"faq_id": "faq 1"}, "faq_id"),
        ({"category": 'a"b'}, "quote"),
        ({"alternatives": [f"问法{i}" for i in range(51)]}, "max 50"),
    ],
)
def test_entry_rules(change, message):
    with pytest.raises(InvalidFaq) as e:
        entry(**change)
    assert message in e.value.message
    assert e.value.message.startswith("faq ")


def test_model_validate_raises_domain_error():
    with pytest.raises(InvalidFaq, match="question"):
        FaqEntry.model_validate({"faq_id": "x", "question": "", "answer": "a"})


def test_phrasing_key_folds_width_case_space_punctuation():
    assert phrasing_key("能开 专票吗？") == phrasing_key("能开专票吗?") == "能开专票吗"
    assert phrasing_key("ＩＰＨＯＮＥ　15！") == phrasing_key("iphone15")


def test_naive_updated_at_is_utc_ms():
    e = entry(updated_at=datetime(2024, 5, 1, 12, 0, 0, 123456))
    assert e.updated_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def test_demo_kb_loads():
    kb = load_demo_kb()
    assert len(kb) == demo_kb.FAQS  # the loader keeps every FAQ and alternative of the raw file
    assert sum(len(e.alternatives) for e in kb) == demo_kb.ALTERNATIVES
    assert {"顺丰", "增值税专用发票"} <= set(kb_terms(kb))


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_text(
        '{"id": "a", "question": "q", "answer": "a"}\n\n{"id": "b", "question": "", "answer": "a"}\n'
    )
    with pytest.raises(InvalidFaq, match=r"faq.jsonl:3: faq b: question"):
        read_faq_jsonl(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            '{"id": "a", "question": "q", "answer": "a", "answr": "x"}',
            r"faq.jsonl:2: unknown field\(s\) \['answr'\]",
        ),
        ('["a", "q"]', r"faq.jsonl:2: not a JSON object"),
        ('{"id": "a", "question": ', r"faq.jsonl:2: not JSON"),
        ('{"id": "a", "faq_id": "b", "question": "q", "answer": "a"}', r"faq.jsonl:2: id and faq_id differ"),
    ],
)
def test_the_seed_reader_reads_faq_jsonl_as_the_importer_does(tmp_path, line, problem):
    """One reader of the format for the seed file and the admin import: the same record is refused by both,
    for the same reason (a typo'd field is not silently dropped)."""
    from services.faq.admin_errors import ImportRejected
    from services.faq.admin_formats import parse_import, plan_import

    text = '{"id": "ok", "question": "能开发票吗", "answer": "能"}\n' + line + "\n"
    path = tmp_path / "faq.jsonl"
    path.write_text(text, "utf-8")
    with pytest.raises(InvalidFaq, match=problem):
        read_faq_jsonl(path)
    with pytest.raises(ImportRejected) as rejected:
        plan_import(parse_import(text, "jsonl"), [], "upsert")
    assert [row["row"] for row in rejected.value.rows] == [2]


def test_embedders_are_deterministic_and_normalised():
    h = HashingEmbedder(64)
    a = h.embed(["能不能发顺丰", "？？", "能不能发顺丰"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert np.array_equal(a[0], a[2])
    assert not np.allclose(HashingEmbedder(64, salt="v2").embed(["能不能发顺丰"])[0], a[0])
    near, far = h.embed(["可以发顺丰吗", "退款多久到账"])
    assert a[0] @ near > a[0] @ far
    c = ConstantEmbedder(64).embed(["a", "b"])
    assert np.array_equal(c[0], c[1])


def test_score_maps_are_0_to_1():
    assert dense_score(-0.3) == 0.0 and dense_score(0.8) == pytest.approx(0.8)
    assert bm25_score(0) == 0.0 and 0.9 < bm25_score(10) < 1.0
    rrf = HybridRanker()
    assert rrf.normalise(2 / 61) == pytest.approx(1.0)
    assert rrf.normalise(1 / 61) == pytest.approx(0.5)
    assert HybridRanker("weighted", dense_weight=0.3, bm25_weight=0.7).normalise(0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        HybridRanker("max")
