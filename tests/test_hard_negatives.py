"""Hard negatives for the FAQ encoder: BM25 mining on a closed knowledge base (scores identical to rank_bm25,
positives never mined, transitively), labelled negatives as the training's hard negatives, and the contrastive
loss: a hard negative is what the encoder learns from when the batch has no other negative, and texts connected by
positive pairs are never pushed apart."""

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from models.default_data import faq_train_rows
from models.hard_negatives import (
    Bm25Index,
    jieba_words,
    labelled_negatives,
    mine_hard_negatives,
    positive_groups,
)
from services.faq.records import PairExample

CORPUS = [
    "忘记登录密码怎么办",
    "登录密码想不起来了",
    "支付密码忘了怎么办",
    "怎么修改支付密码",
    "怎么申请退款",
    "退款多久到账",
    "发货后几天能到",
]


def test_bm25_scores_are_rank_bm25_okapi():
    index = Bm25Index(CORPUS)
    reference = BM25Okapi([jieba_words(t) for t in CORPUS])
    queries = ["忘记登录密码", "退款退款什么时候到账", "运费险"]
    scores = index.scores(queries)
    assert scores.shape == (3, len(CORPUS))
    for row, query in zip(scores, queries, strict=True):
        np.testing.assert_allclose(row, reference.get_scores(jieba_words(query)), rtol=1e-9, atol=1e-12)
    assert scores[0].argmax() == 0 and not scores[2].any()  # no shared word: every score is 0


def test_positive_groups_are_transitive():
    groups = positive_groups([("a", "b"), ("b", "c"), ("d", "e")])
    assert groups["a"] == groups["b"] == groups["c"] != groups["d"] == groups["e"]


def test_mining_never_returns_a_positive_even_transitively():
    # 忘记登录密码怎么办 ~ 登录密码想不起来了 ~ 登录密码忘了怎么办: the last shares the most words with the first,
    # but is its positive through the middle one
    pairs = [("忘记登录密码怎么办", "登录密码想不起来了"), ("登录密码想不起来了", "登录密码忘了怎么办")]
    pairs += [("支付密码忘了怎么办", "怎么修改支付密码"), ("怎么申请退款", "退款多久到账")]
    corpus = [t for p in pairs for t in p] + ["发货后几天能到"]
    mined = mine_hard_negatives(pairs, corpus, pool=3)
    first = mined[0]
    assert first and first[0] == "支付密码忘了怎么办"  # the neighbour that shares 密码 / 忘了 / 怎么办
    assert not {"登录密码想不起来了", "登录密码忘了怎么办", "忘记登录密码怎么办"} & set(first)
    assert "发货后几天能到" not in first  # no shared word: never a "hard" negative
    assert all(len(m) <= 3 for m in mined)
    index = Bm25Index(corpus)
    scores = dict(zip(corpus, index.scores(["忘记登录密码怎么办"])[0], strict=True))
    assert [scores[t] for t in first] == sorted((scores[t] for t in first), reverse=True)
    with pytest.raises(ValueError, match="pool"):
        mine_hard_negatives(pairs, corpus, pool=0)


def test_labelled_negatives_either_side_in_file_order_without_contradictions():
    rows = [("q", "p", 1), ("q", "n1", 0), ("n2", "q", 0), ("q", "n3", 0), ("q", "p", 0), ("q", "n1", 0)]
    groups = positive_groups([("q", "p")])
    assert labelled_negatives(rows, ["q", "p", "x"], groups, limit=2) == [["n1", "n2"], [], []]
    assert labelled_negatives(rows, ["q"], groups, limit=5) == [["n1", "n2", "n3"]]  # "p" is q's positive


def test_knowledge_base_rows_pair_every_two_phrasings_and_mine_other_faqs():
    faq = [
        {"question": "忘记登录密码怎么办？", "alternatives": ["登录密码想不起来了", "怎么重置登录密码"]},
        {"question": "支付密码忘了怎么办？", "alternatives": ["支付密码想不起来了"]},
        {"question": "怎么申请退款？", "alternatives": ["退款在哪里申请"]},
    ]
    rows = faq_train_rows(faq, hard_negatives=2)
    positives = {(r["text_a"], r["text_b"]) for r in rows if r["label"] == 1}
    assert positives == {
        ("忘记登录密码怎么办？", "登录密码想不起来了"),
        ("忘记登录密码怎么办？", "怎么重置登录密码"),
        ("登录密码想不起来了", "怎么重置登录密码"),
        ("支付密码忘了怎么办？", "支付密码想不起来了"),
        ("怎么申请退款？", "退款在哪里申请"),
    }
    own = {t: n for n, f in enumerate(faq) for t in (f["question"], *f["alternatives"])}
    negatives = [r for r in rows if r["label"] == 0]
    assert negatives and all(r["source"] == "faq_kb_demo_bm25" for r in negatives)
    assert all(own[r["text_a"]] != own[r["text_b"]] for r in negatives)
    by_anchor = {}
    for r in negatives:
        by_anchor.setdefault(r["text_a"], []).append(r["text_b"])
    assert by_anchor["登录密码想不起来了"][0] == "支付密码想不起来了"
    assert all(len(v) <= 2 for v in by_anchor.values())


# ── the loss ─────────────────────────────────────────────────────────────────────────────────────────


def _micro_encoder(tmp_path, texts):
    from models.modeling import ARCHS, ErnieSentenceEncoder, load_backbone
    from models.training import seed_everything
    from models.vocab import build_char_vocab, write_vocab
    from services.runtime.tokenizer import ErnieTextTokenizer, TokenizerSettings

    seed_everything(0)
    write_vocab(build_char_vocab(texts), tmp_path / "vocab.txt")
    tokenizer = ErnieTextTokenizer.from_settings(tmp_path, TokenizerSettings(max_seq_len=32))
    return ErnieSentenceEncoder(load_backbone(None, ARCHS["micro"], tokenizer.vocab_size)), tokenizer


def _embed(net, tokenizer, texts):
    from models.training import forward_in_batches

    return forward_in_batches(net, tokenizer, texts)


@pytest.mark.parametrize("hard", [0, 1])
def test_a_hard_negative_is_learned_from_when_the_batch_has_no_other(tmp_path, hard):
    from models.training import TrainOptions, train_encoder

    anchor, match, neighbour = "登录密码忘了怎么办", "找回登录密码", "支付密码忘了怎么办"
    train = [PairExample(anchor, match, 1), PairExample(anchor, neighbour, 0)]
    net, tokenizer = _micro_encoder(tmp_path, [anchor, match, neighbour])

    def margin():
        a, m, n = _embed(net, tokenizer, [anchor, match, neighbour])
        return float(a @ m - a @ n)

    before = margin()
    opts = TrainOptions(
        epochs=30, batch_size=1, learning_rate=1e-3, weight_decay=0.0, hard_negatives=hard, eval_every=10**6
    )  # evaluated once, at the end: the final state is kept
    opts.progress = False
    report = train_encoder(net, tokenizer, train, [PairExample(anchor, match, 1)], opts)
    if hard:
        # one pair a batch: the hard negative is the only negative, and the encoder learns to tell them apart
        assert report["pairs_with_hard_negatives"] == 1
        assert margin() > before + 0.1
    else:
        assert margin() == pytest.approx(before, abs=1e-6)  # nothing to contrast with: nothing learned


def test_positives_connected_through_a_third_text_are_not_negatives(tmp_path):
    from models.training import TrainOptions, train_encoder

    # (a, b) and (b, c) in one batch: neither the same question nor the same match, but one meaning
    a, b, c = "怎么退货", "我要退货", "退货怎么弄"
    train = [PairExample(a, b, 1), PairExample(b, c, 1)]
    net, tokenizer = _micro_encoder(tmp_path, [a, b, c])
    before = _embed(net, tokenizer, [a, b, c])
    opts = TrainOptions(epochs=5, batch_size=2, learning_rate=1e-3, weight_decay=0.0, eval_every=10**6)
    opts.progress = False
    train_encoder(net, tokenizer, train, train, opts)
    # every other column of the batch is a positive of the row: no negative, no gradient, no change
    np.testing.assert_allclose(_embed(net, tokenizer, [a, b, c]), before, atol=1e-6)
