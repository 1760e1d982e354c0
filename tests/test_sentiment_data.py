"""The 3-class customer-service sentiment data: per-intent labelling rules, what build_split takes from where, and
the shipped data/sentiment files (three labels, the dev populations the hand-over threshold is measured on)."""

import collections

import pytest

from models.sentiment_data import CS_REPEAT, LABELS, NEUTRAL_CS_REPEAT, build_split, intent_text_sentiment
from tests.conftest import DATA, read_jsonl, write_jsonl


@pytest.mark.parametrize(
    "text,intent,want",
    [
        ("退货运费是我出吗", "退换货", "neutral"),  # a topic near returns is not anger
        ("退款被拒绝了是什么原因", "退款", "neutral"),
        ("付款失败怎么办", "支付/账单", "neutral"),
        ("都三天了还没发货", "物流查询", None),  # impatient 催单: neither calm nor a complaint, left out
        ("钱呢？？？", "退款", None),
        ("太差劲了", "投诉", "negative"),
        ("人工客服怎么联系", "转人工", "neutral"),
        ("转人工怎么这么难", "转人工", "negative"),
        ("你们真棒", "其他/闲聊", "positive"),
        ("在吗", "其他/闲聊", "neutral"),
    ],
)
def test_intent_text_sentiment(text, intent, want):
    assert intent_text_sentiment(text, intent) == want


def test_unknown_intent_has_no_rule():
    with pytest.raises(ValueError, match="no sentiment rule"):
        intent_text_sentiment("你好", "新标签")


@pytest.fixture
def fake_sources(tmp_path):
    shared, data = tmp_path / "shared", tmp_path / "data"
    for split in ("train", "dev"):
        write_jsonl(
            shared / "waimai_10k" / f"{split}.jsonl",
            [
                {"text": f"很好吃{split}", "label": "positive"},
                {"text": f"太难吃了{split}", "label": "negative"},
            ],
        )
        write_jsonl(
            shared / "online_shopping_10_cats" / f"{split}.jsonl",
            [{"text": f"质量不错{split}", "label": "positive"}, {"text": "同一句话", "label": "negative"}],
        )
        write_jsonl(
            shared / "smp2017_ecdt_task1" / f"{split}.jsonl",
            [{"text": f"你个蠢蛋{split}", "label": "chat"}, {"text": f"明天天气{split}", "label": "weather"}],
        )
        write_jsonl(
            shared / "smp2019_ecdt_nlu" / f"{split}.jsonl", [{"text": f"明天天气{split}", "label": "weather"}]
        )
        write_jsonl(
            shared / "nlpcc2018_task4_slu" / f"{split}.jsonl",
            [
                {"text": f"梅琳{split}", "label": "OTHERS"},
                {"text": f"导航去公司{split}", "label": "navigation"},
            ],
        )
        write_jsonl(
            data / "intent_cs_demo" / f"{split}.jsonl",
            [
                {"text": f"退货地址是哪里{split}", "label": "退换货"},
                {"text": f"我要投诉{split}", "label": "投诉"},
                {"text": f"到底发不发{split}", "label": "物流查询"},
                {"text": "同一句话", "label": "退款"},
            ],
        )
        write_jsonl(
            data / "cs_sentiment" / f"{split}.jsonl", [{"text": f"垃圾客服{split}", "label": "negative"}]
        )
    write_jsonl(
        data / "faq_kb_demo" / "faq.jsonl",
        [
            {"id": "faq-1", "category": "退换货", "question": "怎么退货", "alternatives": ["退货流程"]},
            {"id": "faq-2", "category": "投诉", "question": "怎么投诉", "alternatives": ["配送服务太差了"]},
        ],
    )
    write_jsonl(
        data / "faq_kb_demo" / "queries_dev.jsonl",
        [
            {"query": "退货咋弄", "faq_id": "faq-1"},
            {"query": "送货的师傅很凶 去哪投诉他", "faq_id": "faq-2"},
            {"query": "我已经委托律师了", "faq_id": None},
        ],
    )
    return shared, data


def test_build_split_sources_and_labels(fake_sources):
    shared, data = fake_sources
    train = build_split("train", shared, data)
    texts = collections.Counter(r["text"] for r in train)
    assert {r["label"] for r in train} == set(LABELS)
    assert "你个蠢蛋train" not in texts and "梅琳train" not in texts  # chat / OTHERS left out
    assert "到底发不发train" not in texts  # impatient request left out
    assert {"明天天气train", "导航去公司train", "退货地址是哪里train", "怎么退货", "退货流程"} <= set(texts)
    assert "明天天气train" in texts and texts["明天天气train"] == 1  # smp2019 repeats smp2017: kept once
    assert (
        "怎么投诉" not in texts and "配送服务太差了" not in texts
    )  # the KB's complaint FAQs are not neutral
    assert texts["垃圾客服train"] == CS_REPEAT and texts["我要投诉train"] == CS_REPEAT
    assert texts["退货流程"] == NEUTRAL_CS_REPEAT and texts["退货地址是哪里train"] == NEUTRAL_CS_REPEAT
    assert texts["很好吃train"] == 1
    assert texts["同一句话"] == 1  # a text in two sources: the first occurrence (the review) wins
    assert next(r for r in train if r["text"] == "同一句话")["label"] == "negative"


def test_build_split_dev_keeps_populations_once(fake_sources):
    shared, data = fake_sources
    dev = build_split("dev", shared, data)
    by_text = {r["text"]: r for r in dev}
    assert len(by_text) == len(dev)  # nothing repeated in dev
    assert by_text["退货咋弄"] == {"text": "退货咋弄", "label": "neutral", "source": "faq_kb_demo"}
    assert "送货的师傅很凶 去哪投诉他" not in by_text and "我已经委托律师了" not in by_text
    assert (
        by_text["垃圾客服dev"]["source"] == "cs_sentiment" and by_text["我要投诉dev"]["label"] == "negative"
    )
    with pytest.raises(ValueError, match="split must be"):
        build_split("test", shared, data)


def test_shipped_sentiment_data_has_three_labels_and_no_dev_leak():
    train = read_jsonl(DATA / "sentiment" / "train.jsonl")
    dev = read_jsonl(DATA / "sentiment" / "dev.jsonl")
    labels = (DATA / "sentiment" / "labels.txt").read_text("utf-8").split()
    assert labels == ["negative", "neutral", "positive"]
    assert {r["label"] for r in train} == {r["label"] for r in dev} == set(labels)
    assert not {r["text"] for r in train} & {r["text"] for r in dev}
    dev_sources = collections.Counter((r["source"], r["label"]) for r in dev)
    assert dev_sources[("faq_kb_demo", "neutral")] >= 150 and dev_sources[("cs_sentiment", "negative")] >= 50


def test_choose_threshold_is_the_lowest_meeting_the_neutral_budget():
    import numpy as np

    from models.handoff_report import choose_threshold

    neutral = np.array([0.1] * 97 + [0.6, 0.75, 0.93])
    assert choose_threshold(neutral, max_neutral=0.01) == 0.76  # only 0.93 left: 1 %
    assert choose_threshold(neutral, max_neutral=0.0) == 0.94
    assert (
        choose_threshold(np.array([0.999]), max_neutral=0.0) == 0.99
    )  # nothing meets it: the top of the grid
