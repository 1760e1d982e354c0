"""Shared fixtures: tiny ERNIE models trained in seconds on the repo's own demo data, exported once per session.
Also installs the skip gate (tests/skip_gate.py): a run with a skip not in tests/allowed_skips.toml fails."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.skip_gate import install as install_skip_gate

os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


# Fixtures that train (here and in test modules): a test using one is `slow`, so `make test-fast` never trains.
TRAINING_FIXTURES = {"classifier_checkpoint", "encoder_checkpoint", "model_repo", "wide_repo"}


def pytest_configure(config: pytest.Config) -> None:
    install_skip_gate(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the run when a test that trains (through a fixture of TRAINING_FIXTURES) is not marked slow."""
    unmarked = [
        item.nodeid
        for item in items
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests train a model (fixtures " + ", ".join(sorted(TRAINING_FIXTURES)) + ") but are not "
            "marked slow, so `make test-fast` would train: mark them @pytest.mark.slow: "
            + ", ".join(unmarked)
        )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """A few rows per label of the demo intent set, and FAQ pairs from the demo knowledge base."""
    out = tmp_path_factory.mktemp("data")
    rows = read_jsonl(DATA / "intent_cs_demo" / "train.jsonl")
    per_label: dict[str, list[dict]] = {}
    for r in rows:
        per_label.setdefault(r["label"], []).append(r)
    train = [r for label_rows in per_label.values() for r in label_rows[:12]]
    dev = [r for label_rows in per_label.values() for r in label_rows[12:16]]
    faq = read_jsonl(DATA / "faq_kb_demo" / "faq.jsonl")[:30]
    pairs_train = [
        {"text_a": f["question"], "text_b": a, "label": 1} for f in faq for a in f["alternatives"][:-1]
    ]
    pairs_dev = [{"text_a": f["question"], "text_b": f["alternatives"][-1], "label": 1} for f in faq]
    pairs_dev += [{"text_a": faq[0]["question"], "text_b": faq[1]["question"], "label": 0}]
    return {
        "cls_train": write_jsonl(out / "cls_train.jsonl", train),
        "cls_dev": write_jsonl(out / "cls_dev.jsonl", dev),
        "pairs_train": write_jsonl(out / "pairs_train.jsonl", pairs_train),
        "pairs_dev": write_jsonl(out / "pairs_dev.jsonl", pairs_dev),
        "labels": sorted(per_label),
    }


def train_tiny(task: str, train: Path, dev: Path, out: Path, *extra: str) -> Path:
    from models.train import main

    argv = ["--task", task, "--train", str(train), "--dev", str(dev), "--out", str(out), "--arch", "micro"]
    argv += ["--max-steps", "12", "--batch-size", "16", "--max-seq-len", "32", "--no-progress", *extra]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def classifier_checkpoint(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "intent"
    return train_tiny("classification", tiny_data["cls_train"], tiny_data["cls_dev"], out)


@pytest.fixture(scope="session")
def encoder_checkpoint(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "faq"
    return train_tiny("embedding", tiny_data["pairs_train"], tiny_data["pairs_dev"], out)


@pytest.fixture(scope="session")
def model_repo(classifier_checkpoint, encoder_checkpoint, tmp_path_factory) -> Path:
    """A repository holding intent v1 and faq v1, exported by the real exporter."""
    from export.exporter import export_checkpoint

    repo = tmp_path_factory.mktemp("model_repository")
    export_checkpoint(classifier_checkpoint, repo, "intent", max_batch_size=16)
    export_checkpoint(encoder_checkpoint, repo, "faq", max_batch_size=16)
    return repo
