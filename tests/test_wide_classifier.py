"""The wide branch of a classifier (a bag of hashed character n-grams inside the exported graph) and class-balanced
loss: the hashing is what a reader of the docstring expects, padding never counts, the frozen program answers
like the training graph in Paddle Inference and in onnxruntime, and `load_network` rebuilds the branch."""

import json

import numpy as np
import paddle
import pytest

from models.modeling import HashedNgramBag, WideConfig, load_network
from models.training import balanced_class_weights
from services.runtime.repository import ModelRepository
from services.runtime.runner import PaddleRunner, RunnerSettings
from tests.conftest import train_tiny

PRIMES = (1000003, 999983, 1000211)
BUCKETS = 1 << 12


def reference_ngram_ids(row: list[int], n: int) -> list[int]:
    """Hash of each n-gram without padding: (sum_k id_k * prime_k + n) mod buckets, in plain Python ints."""
    return [
        (sum(row[i + k] * PRIMES[k] for k in range(n)) + n) % BUCKETS
        for i in range(len(row) - n + 1)
        if all(t != 0 for t in row[i : i + n])
    ]


def test_ngram_hashing_matches_reference_and_skips_padding():
    bag = HashedNgramBag(WideConfig(buckets=BUCKETS, dim=4, ngrams=(1, 2, 3)))
    rows = [[1, 731, 22, 19999, 2], [1, 45, 2, 0, 0]]
    ids, valid = bag.ngram_ids(paddle.to_tensor(np.array(rows, dtype=np.int64)))
    ids, valid = ids.numpy(), valid.numpy()
    for r, row in enumerate(rows):
        want = [h for n in (1, 2, 3) for h in reference_ngram_ids(row, n)]
        assert ids[r][valid[r]].tolist() == want
    assert (
        valid[1].sum() == 3 + 2 + 1
    )  # [CLS] 45 [SEP]: 3 unigrams, 2 bigrams, 1 trigram; padding never counts


def test_bag_is_the_mean_over_real_ngrams_only():
    bag = HashedNgramBag(WideConfig(buckets=BUCKETS, dim=4, ngrams=(1, 2)))
    short = bag(paddle.to_tensor(np.array([[1, 45, 2]], dtype=np.int64))).numpy()
    padded = bag(paddle.to_tensor(np.array([[1, 45, 2, 0, 0, 0]], dtype=np.int64))).numpy()
    np.testing.assert_allclose(short, padded, atol=1e-6)


def test_bad_wide_config_is_refused():
    with pytest.raises(ValueError, match="n-grams up to"):
        HashedNgramBag(WideConfig(buckets=BUCKETS, dim=4, ngrams=(1, 5)))
    with pytest.raises(ValueError, match="bad wide branch"):
        HashedNgramBag(WideConfig(buckets=1, dim=4))


def test_balanced_class_weights():
    y = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(balanced_class_weights(y, 3), [4 / 6, 2.0, 1.0])  # label 2 absent: weight 1


@pytest.fixture(scope="module")
def wide_repo(tiny_data, tmp_path_factory):
    from export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("wide") / "intent"
    checkpoint = train_tiny(
        "classification",
        tiny_data["cls_train"],
        tiny_data["cls_dev"],
        out,
        "--wide-buckets",
        "4096",
        "--wide-dim",
        "8",
        "--class-weights",
        "balanced",
    )
    repo = tmp_path_factory.mktemp("wide_repo")
    export_checkpoint(checkpoint, repo, "intent", max_batch_size=16)
    return checkpoint, repo


TEXTS = ["在吗", "退货运费谁出", "我要投诉你们的快递员态度太差了！！", "发到成都要几天 订单号2023112345678"]


@pytest.mark.slow
def test_wide_checkpoint_records_and_reloads_its_branch(wide_repo):
    checkpoint, _ = wide_repo
    meta = json.loads((checkpoint / "training.json").read_text("utf-8"))
    assert meta["wide"]["buckets"] == 4096 and meta["class_weights"] == "balanced"
    net = load_network("classification", checkpoint, len(meta["labels"]))
    assert net.wide is not None and net.wide.embedding.weight.shape == [4096, 8]


@pytest.mark.slow
def test_wide_model_served_equals_training_graph(wide_repo):
    from models.modeling import CalibratedClassifier

    checkpoint, repo = wide_repo
    version = ModelRepository(repo).open("intent")
    meta = json.loads((checkpoint / "training.json").read_text("utf-8"))
    net = CalibratedClassifier(
        load_network("classification", checkpoint, len(meta["labels"])), meta["temperature"]
    )
    net.eval()
    ids = version.tokenizer()(TEXTS)
    with paddle.no_grad():
        eager = net(paddle.to_tensor(ids)).numpy()
    served = PaddleRunner(version, RunnerSettings(cpu_threads=1)).run(ids)["probs"]
    np.testing.assert_allclose(served, eager, atol=1e-4)


@pytest.mark.slow
def test_wide_model_onnxruntime_equals_paddle(wide_repo, tmp_path, monkeypatch):
    """The n-gram hash must be integer arithmetic in ONNX too (a Python-scalar multiply converts to a float32
    `scale` op that rounds large products and sends n-grams to other rows)."""
    from services.worker.onnx_backend import OnnxRuntimeBackend

    monkeypatch.setenv("KEFU_ONNX_CACHE", str(tmp_path))
    _, repo = wide_repo
    version = ModelRepository(repo).open("intent")
    ids = version.tokenizer()(TEXTS)
    paddle_probs = PaddleRunner(version, RunnerSettings(cpu_threads=1)).run(ids)["probs"]
    onnx_probs = OnnxRuntimeBackend(version).infer(ids)["probs"]
    np.testing.assert_allclose(onnx_probs, paddle_probs, atol=1e-4)
