"""Export round trip: the frozen Paddle Inference program answers like the training graph, versions are
immutable, and a version whose files do not match the manifest is refused."""

import json
import shutil

import numpy as np
import paddle
import pytest

from export.exporter import ExportError, export_checkpoint
from models.modeling import CalibratedClassifier, load_network
from services.runtime.repository import ManifestError, ModelRepository, Task
from services.runtime.runner import PaddleRunner, RunnerSettings

pytestmark = pytest.mark.slow

TEXTS = [
    "在吗",
    "我的快递到哪了？订单号2023112345678",
    "退款什么时候到账",
    "iPhone15有货吗",
    "我要投诉你们的快递员态度太差了" * 3,
]


def eager_outputs(checkpoint, ids):
    meta = json.loads((checkpoint / "training.json").read_text("utf-8"))
    net = load_network(meta["task"], checkpoint, len(meta["labels"]), meta.get("pooling", "mean"))
    if meta["task"] == "classification":
        net = CalibratedClassifier(net, meta["temperature"])
    net.eval()
    with paddle.no_grad():
        return net(paddle.to_tensor(ids)).numpy()


@pytest.mark.parametrize("name,output", [("intent", "probs"), ("faq", "embedding")])
def test_predictor_equals_training_graph(model_repo, classifier_checkpoint, encoder_checkpoint, name, output):
    checkpoint = classifier_checkpoint if name == "intent" else encoder_checkpoint
    version = ModelRepository(model_repo).open(name)
    runner = PaddleRunner(version, RunnerSettings(cpu_threads=1))
    tokenizer = version.tokenizer()
    for batch in (TEXTS[:1], TEXTS):  # batch and sequence dimensions are dynamic
        ids = tokenizer(batch)
        served = runner.run(ids)[output]
        assert served.shape[0] == len(batch)
        np.testing.assert_allclose(served, eager_outputs(checkpoint, ids), atol=1e-4)
    if name == "intent":
        assert np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
    else:
        assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_repository_layout_and_config(model_repo, tiny_data):
    repo = ModelRepository(model_repo)
    assert repo.model_names() == ["faq", "intent"]
    intent = repo.config("intent")
    assert intent.task == Task.CLASSIFICATION and intent.labels == tiny_data["labels"]
    assert intent.inputs[0].name == "input_ids" and intent.inputs[0].dims == [-1, -1]
    assert intent.outputs[0].dims == [-1, len(tiny_data["labels"])]
    assert intent.max_batch_size == 16 and intent.max_seq_len == 32
    faq = repo.config("faq")
    assert faq.task == Task.EMBEDDING and faq.outputs[0].name == "embedding"
    files = set(p.name for p in (model_repo / "intent" / "1").iterdir())
    assert {
        "inference.json",
        "inference.pdiparams",
        "vocab.txt",
        "tokenizer.json",
        "labels.txt",
        "evaluation.json",
        "training.json",
        "manifest.json",
    } <= files
    report = repo.open("intent").evaluation()
    assert report["export_parity_max_abs_diff"] < 1e-4
    assert {"accuracy", "macro_f1", "ece", "per_label", "baseline"} <= set(report)


def test_existing_version_is_never_overwritten(model_repo, classifier_checkpoint):
    before = (model_repo / "intent" / "1" / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoint(classifier_checkpoint, model_repo, "intent", version=1)
    assert (model_repo / "intent" / "1" / "manifest.json").read_bytes() == before
    assert not [p for p in (model_repo / "intent").iterdir() if p.name.startswith(".staging")]


def test_next_version_and_version_policy(model_repo, classifier_checkpoint, tmp_path):
    repo_dir = tmp_path / "repo"
    shutil.copytree(model_repo, repo_dir)
    v2 = export_checkpoint(classifier_checkpoint, repo_dir, "intent")
    assert v2.version == 2
    repo = ModelRepository(repo_dir)
    assert repo.serving_versions("intent") == [2]  # default policy: latest 1
    config = repo.config("intent")
    config.version_policy.latest = 2
    config.save(repo_dir / "intent" / "config.yaml")
    assert repo.serving_versions("intent") == [1, 2]


def test_a_task_change_is_refused(model_repo, encoder_checkpoint, tmp_path):
    repo_dir = tmp_path / "repo"
    shutil.copytree(model_repo, repo_dir)
    with pytest.raises(ExportError, match="is a classification model"):
        export_checkpoint(encoder_checkpoint, repo_dir, "intent")


@pytest.mark.parametrize("tamper", ["modify", "remove", "add", "manifest"])
def test_manifest_tampering_refused(model_repo, tmp_path, tamper):
    repo_dir = tmp_path / "repo"
    shutil.copytree(model_repo, repo_dir)
    version_dir = repo_dir / "intent" / "1"
    if tamper == "modify":
        params = version_dir / "inference.pdiparams"
        data = bytearray(params.read_bytes())
        data[len(data) // 2] ^= 0xFF
        params.write_bytes(bytes(data))
        match = "inference.pdiparams has sha256"
    elif tamper == "remove":
        (version_dir / "labels.txt").unlink()
        match = "missing"
    elif tamper == "add":
        (version_dir / "extra.bin").write_bytes(b"x")
        match = "not listed"
    else:
        (version_dir / "manifest.json").write_text("{not json", encoding="utf-8")
        match = "unreadable manifest.json"
    with pytest.raises(ManifestError, match=match):
        ModelRepository(repo_dir).open("intent", 1)


def test_evaluate_cli_classification_report(model_repo, tiny_data, capsys):
    from models.evaluate import main

    assert main(["--model", str(model_repo / "intent" / "1"), "--data", str(tiny_data["cls_dev"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "classification" and report["n"] == 40
    assert {"accuracy", "macro_f1", "ece", "per_label"} <= set(report)
    assert set(report["per_label"]) == set(tiny_data["labels"])
    assert (
        report["baseline"]["name"] == "tfidf_char_1-3gram_logreg" and 0 <= report["baseline"]["macro_f1"] <= 1
    )


def test_evaluate_cli_retrieval_report(model_repo, tiny_data, capsys):
    from models.evaluate import main

    assert main(["--model", str(model_repo / "faq"), "--data", str(tiny_data["pairs_dev"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "embedding" and report["kb_size"] == 30 and report["n_queries"] == 30
    for key in ("recall_at_1", "recall_at_5", "recall_at_10", "mrr"):
        assert 0 <= report[key] <= 1
    assert report["recall_at_1"] <= report["recall_at_5"] <= report["recall_at_10"]
    assert set(report["baseline"]) == {"tfidf", "bm25"}


def test_evaluate_cli_rejects_bad_data_and_bad_model(model_repo, tmp_path, capsys):
    from models.evaluate import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "你好", "label": "不存在的标签"}\n', encoding="utf-8")
    assert main(["--model", str(model_repo / "intent" / "1"), "--data", str(bad)]) == 2
    assert "unknown label '不存在的标签'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--data", str(bad)]) == 2
    assert "neither a model folder" in capsys.readouterr().err
