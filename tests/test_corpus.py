"""Bad training input is rejected with a message naming the file, the line and the problem."""

import pytest

from models.corpus import load_classification
from models.train import main as train_main
from services.faq.records import DataError, load_pairs, read_records, retrieval_split
from tests.conftest import write_jsonl


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        load_classification(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")


def test_missing_fields_named_with_line_numbers(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"text": "在吗", "label": "其他/闲聊"}, {"text": "退款"}, {"label": "退款"}]
    )
    with pytest.raises(DataError) as e:
        load_classification(path)
    msg = str(e.value)
    assert "2 of 3 rows are invalid" in msg
    assert "line 2: missing field(s) label" in msg
    assert "line 3: missing field(s) text" in msg


def test_unknown_label(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "我要退款", "label": "退钱"}])
    with pytest.raises(DataError, match=r"line 1: unknown label '退钱' \(known: 物流查询, 退款\)"):
        load_classification(path, ["退款", "物流查询"])


def test_blank_text_and_bad_json(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "   ", "label": "退款"}])
    with pytest.raises(DataError, match="line 1: field 'text' must be a non-empty string"):
        load_classification(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好", "label": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        read_records(bad)


def test_pairs_validation(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text_a": "花呗怎么还", "text_b": "如何还花呗", "label": 2}])
    with pytest.raises(DataError, match="line 1: label must be 0 or 1, got 2"):
        load_pairs(path)
    path = write_jsonl(tmp_path / "p2.jsonl", [{"text_a": "花呗怎么还", "label": 1}])
    with pytest.raises(DataError, match="missing field"):
        load_pairs(path)


def test_csv_formats(tmp_path):
    cls = tmp_path / "t.csv"
    cls.write_text('text,label\n快递到哪了,物流查询\n"你好,在吗",其他/闲聊\n', encoding="utf-8")
    assert [e.label for e in load_classification(cls)] == ["物流查询", "其他/闲聊"]
    pairs = tmp_path / "p.csv"
    pairs.write_text("text_a,text_b,label\n怎么退钱,如何申请退款,1\n", encoding="utf-8")
    assert load_pairs(pairs)[0].label == 1


def test_retrieval_split_uses_positive_pairs_only():
    from services.faq.records import PairExample

    kb, queries, gold = retrieval_split(
        [
            PairExample("A", "a1", 1),
            PairExample("B", "b1", 1),
            PairExample("A", "a2", 1),
            PairExample("A", "x", 0),
        ]
    )
    assert kb == ["A", "B"] and queries == ["a1", "b1", "a2"] and gold == [0, 1, 0]


def test_train_cli_rejects_bad_input_with_exit_2(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "快递呢", "label": "物流查询"}, {"text": "退钱"}])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "快递呢", "label": "物流查询"}])
    code = train_main(
        ["--task", "intent", "--train", str(train), "--dev", str(dev), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "line 2: missing field(s) label" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_train_cli_rejects_dev_label_unseen_in_training(tmp_path, capsys):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"text": "快递呢", "label": "物流查询"}, {"text": "退钱", "label": "退款"}]
    )
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "我要投诉", "label": "投诉"}])
    code = train_main(
        ["--task", "intent", "--train", str(train), "--dev", str(dev), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "unknown label '投诉'" in capsys.readouterr().err


def test_train_cli_rejects_pairs_without_positives(tmp_path, capsys):
    rows = [{"text_a": "a", "text_b": "b", "label": 0}]
    train, dev = write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "d.jsonl", rows)
    code = train_main(
        ["--task", "faq", "--train", str(train), "--dev", str(dev), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "no positive pairs" in capsys.readouterr().err
