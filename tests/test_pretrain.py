"""MLM masking, corpus collection and resuming of the domain-adaptive pre-training."""

import json

import numpy as np
import pytest

from models.pretrain import collect_corpus, mask_tokens
from models.vocab import build_char_vocab, write_vocab
from services.runtime.tokenizer import ErnieTextTokenizer
from tests.conftest import DATA, write_jsonl


def test_masking_never_touches_special_tokens_and_targets_are_the_originals(tmp_path):
    texts = ["我的快递到哪了", "退款什么时候到账", "这个商品有没有优惠券"] * 50
    write_vocab(build_char_vocab(texts, min_freq=1), tmp_path / "vocab.txt")
    tok = ErnieTextTokenizer(tmp_path / "vocab.txt", 32)
    batch = tok(texts)
    inputs, positions, targets = mask_tokens(batch, tok, np.random.default_rng(0))
    flat_in, flat_orig = inputs.reshape(-1), batch.reshape(-1)
    special = np.isin(flat_orig, [tok.pad_id, tok.cls_id, tok.sep_id])
    assert not special[positions].any()
    np.testing.assert_array_equal(targets, flat_orig[positions])
    real = (~special).sum()
    assert 0.10 < len(positions) / real < 0.22  # about 15 %, at least one per sequence
    masked = flat_in[positions] == tok.mask_id
    assert 0.7 < masked.mean() < 0.9  # 80 % [MASK]
    untouched = np.setdiff1d(np.arange(flat_in.size), positions)
    np.testing.assert_array_equal(flat_in[untouched], flat_orig[untouched])


def test_corpus_reads_train_splits_only_and_chunks_long_texts(tmp_path):
    write_jsonl(
        tmp_path / "a" / "train.jsonl", [{"text": "短句子", "label": "x"}, {"text": "长" * 70, "label": "y"}]
    )
    write_jsonl(tmp_path / "a" / "dev.jsonl", [{"text": "开发集不能用", "label": "x"}])
    write_jsonl(
        tmp_path / "b" / "train.jsonl", [{"text_a": "花呗怎么还", "text_b": "如何还花呗", "label": 1}]
    )
    texts, files = collect_corpus([tmp_path], chunk=30)
    assert "开发集不能用" not in texts
    assert {"短句子", "花呗怎么还", "如何还花呗"} <= set(texts)
    assert all(len(t) <= 30 for t in texts) and "长" * 30 in texts
    assert all("dev" not in f for f in files)


def test_repo_demo_kb_phrasings_are_collected():
    texts, _ = collect_corpus([DATA / "faq_kb_demo"], chunk=62)
    assert len(texts) > 91 * 3  # questions, answers and alternatives


@pytest.mark.slow
def test_pretraining_resumes_from_its_last_checkpoint(tmp_path):
    """Hours of pre-training are spread over several runs: a second run with more steps goes on from the
    first run's last evaluation (weights, optimiser and schedule, sampler) instead of starting over."""
    from models import pretrain

    corpus = ["我的快递到哪了", "退款什么时候到账", "这个商品有没有优惠券", "怎么开发票", "能不能发顺丰"] * 40
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"text": f"{t}{i}"} for i, t in enumerate(corpus)])
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    common = ["--data", str(tmp_path / "data"), "--out", str(out), "--checkpoint-dir", str(ckpt)]
    common += ["--arch", "micro", "--batch-size", "8", "--eval-every", "3", "--min-char-freq", "1"]
    assert pretrain.main([*common, "--steps", "3"]) == 0
    first = json.loads((out / "pretrain.json").read_text("utf-8"))
    assert first["steps"] == 3 and first["resumed_from_step"] == 0
    assert json.loads((ckpt / "loop.json").read_text("utf-8"))["step"] == 3

    assert pretrain.main([*common, "--steps", "6"]) == 0
    second = json.loads((out / "pretrain.json").read_text("utf-8"))
    assert second["steps"] == 6 and second["resumed_from_step"] == 3
    assert [h["step"] for h in second["held_out_mlm"]] == [3, 6]  # the first run's evaluation is kept

    (tmp_path / "data" / "train.jsonl").write_text('{"text": "全新的语料库文本"}\n' * 50, "utf-8")
    assert pretrain.main([*common, "--steps", "9"]) == 2  # another corpus: never mixed into that checkpoint
