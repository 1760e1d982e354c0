"""HuggingFace `tokenizers` on an ERNIE vocab.txt gives exactly paddlenlp ErnieTokenizer's ids."""

import contextlib
import io

import pytest

from models.vocab import build_char_vocab, write_vocab
from services.runtime.tokenizer import ErnieTextTokenizer
from tests.conftest import DATA, ROOT, read_jsonl

TRICKY = [
    "我的订单号是2023112345678，怎么还没发货？？",
    "iPhone15 Pro Max 有货吗",
    "ＡＢＣ全角字母和１２３全角数字",
    "Café naïve résumé 带重音",
    "emoji 😀 表情👍 还有 ♥",
    "  前后空格   和\t制表符\n换行  ",
    "花呗/借呗/信用卡 支付失败!!!",
    "email: test.user@example.com 电话 138-0000-0000",
    "罕见字：龘靐齉爩",
    "x" * 200,
    "长" * 300,
    "mixed中English混合text123abc",
]


def texts_for_parity() -> list[str]:
    rows = read_jsonl(DATA / "intent_cs_demo" / "train.jsonl") + read_jsonl(
        DATA / "intent_cs_demo" / "dev.jsonl"
    )
    reviews = read_jsonl(DATA / "sentiment" / "dev.jsonl")[:800]
    faq = read_jsonl(DATA / "faq_kb_demo" / "faq.jsonl")
    return [r["text"] for r in rows + reviews] + [f["answer"] for f in faq] + TRICKY


def paddlenlp_ids(vocab_file, texts, max_len):
    with contextlib.redirect_stderr(io.StringIO()):
        from paddlenlp.transformers import ErnieTokenizer

    tok = ErnieTokenizer(str(vocab_file), do_lower_case=True)
    return [tok(t, max_length=max_len, truncation=True)["input_ids"] for t in texts]


@pytest.mark.parametrize("vocab", ["built", "pretrained"])
def test_ids_identical_to_paddlenlp(vocab, tmp_path):
    texts = texts_for_parity()
    if vocab == "built":
        vocab_file = tmp_path / "vocab.txt"
        write_vocab(
            build_char_vocab(texts[:500], min_freq=1), vocab_file
        )  # leaves many chars [UNK] on purpose
    else:
        vocab_file = ROOT / "models" / "pretrained" / "ernie-tiny-cs" / "vocab.txt"
    ours = ErnieTextTokenizer(vocab_file, max_seq_len=64)
    assert ours.encode_ids(texts) == paddlenlp_ids(vocab_file, texts, 64)


def test_padding_and_truncation(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    write_vocab(build_char_vocab(["你好世界"], min_freq=1), vocab_file)
    tok = ErnieTextTokenizer(vocab_file, max_seq_len=5)
    ids = tok(["你好", "你好世界你好世界"])
    assert ids.dtype.name == "int64" and ids.shape == (2, 5)
    assert ids[0].tolist() == [
        tok.cls_id,
        tok.encode_ids(["你"])[0][1],
        tok.encode_ids(["好"])[0][1],
        tok.sep_id,
        tok.pad_id,
    ]
    assert ids[1, -1] == tok.sep_id


def test_vocab_without_special_tokens_is_refused(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("你\n好\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"has no \[PAD\] token"):
        ErnieTextTokenizer(vocab_file)
