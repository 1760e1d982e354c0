"""A paddlenlp-format ERNIE checkpoint in a local folder initialises training (as a real ERNIE 3.0 one would)."""

import contextlib
import io
import json

import numpy as np
import paddle
import pytest

from models.modeling import ARCHS, load_backbone
from models.vocab import build_char_vocab, write_vocab
from tests.conftest import ROOT, train_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory, tiny_data):
    """Save an ErnieModel + ErnieTokenizer with paddlenlp's own save_pretrained, like a downloaded release."""
    with contextlib.redirect_stderr(io.StringIO()):
        from paddlenlp.transformers import ErnieModel, ErnieTokenizer

    folder = tmp_path_factory.mktemp("ernie-local")
    texts = [json.loads(line)["text"] for line in tiny_data["cls_train"].read_text("utf-8").splitlines()]
    write_vocab(build_char_vocab(texts + ["一二三四五"], min_freq=1), folder / "vocab.txt")
    vocab_size = len((folder / "vocab.txt").read_text("utf-8").splitlines())
    paddle.seed(7)
    model = ErnieModel(ARCHS["micro"].ernie_config(vocab_size))
    with contextlib.redirect_stdout(io.StringIO()):
        model.save_pretrained(str(folder))
        ErnieTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    return folder, {k: v.numpy() for k, v in model.state_dict().items()}


def test_backbone_weights_come_from_the_checkpoint(local_checkpoint):
    folder, saved = local_checkpoint
    vocab_size = len((folder / "vocab.txt").read_text("utf-8").splitlines())
    loaded = load_backbone(folder, ARCHS["tiny"], vocab_size)  # arch is ignored: the checkpoint decides
    assert loaded.config.hidden_size == 64 and loaded.config.num_hidden_layers == 2
    state = loaded.state_dict()
    assert set(saved) == set(state)
    for key, value in saved.items():
        np.testing.assert_array_equal(state[key].numpy(), value)


def test_training_from_local_checkpoint(local_checkpoint, tiny_data, tmp_path):
    folder, _ = local_checkpoint
    out = train_tiny(
        "classification",
        tiny_data["cls_train"],
        tiny_data["cls_dev"],
        tmp_path / "run",
        "--init",
        str(folder),
    )
    assert (out / "vocab.txt").read_text("utf-8") == (folder / "vocab.txt").read_text("utf-8")
    meta = json.loads((out / "training.json").read_text("utf-8"))
    assert meta["init"] == str(folder) and meta["backbone_config"]["hidden_size"] == 64


def test_vocab_size_mismatch_is_refused(local_checkpoint):
    folder, _ = local_checkpoint
    with pytest.raises(ValueError, match="vocab_size"):
        load_backbone(folder, ARCHS["micro"], 10)


def test_committed_pretrained_checkpoint_loads():
    folder = ROOT / "models" / "pretrained" / "ernie-tiny-cs"  # committed, weights included
    vocab_size = len((folder / "vocab.txt").read_text("utf-8").splitlines())
    backbone = load_backbone(folder, ARCHS["tiny"], vocab_size)
    assert backbone.config.num_hidden_layers == 4 and backbone.config.hidden_size == 128
    provenance = json.loads((folder / "pretrain.json").read_text("utf-8"))
    assert provenance["held_out_mlm"][-1]["loss"] < provenance["held_out_mlm"][0]["loss"]
