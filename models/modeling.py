"""ERNIE networks built from paddlenlp's ERNIE classes.

`--init DIR` takes any paddlenlp-format ERNIE checkpoint folder (config.json, model_state.pdparams,
vocab.txt): a real ERNIE 3.0 release or our own MLM-pretrained tiny model. Without one, a small ERNIE is
built from scratch on a character vocabulary made from the training data.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import paddle
import paddle.nn.functional as F
from paddle import nn

os.environ.setdefault("PADDLENLP_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "paddlenlp"))
with contextlib.redirect_stderr(io.StringIO()):  # paddlenlp prints import-time warnings we cannot act on
    from paddlenlp.transformers import ErnieConfig, ErnieModel

logging.getLogger("paddlenlp").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Arch:
    """Shape of an ERNIE trained from scratch (ignored when initialising from a checkpoint)."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def ernie_config(self, vocab_size: int) -> ErnieConfig:
        return ErnieConfig(vocab_size=vocab_size, type_vocab_size=4, pad_token_id=0, **asdict(self))


@dataclass(frozen=True)
class WideConfig:
    """The wide branch of a classifier: a fastText-style bag of hashed character n-grams.

    `buckets` rows of `dim` floats (buckets x dim x 4 bytes in the exported model); `lr_scale` multiplies the
    learning rate of its embedding (a bag of sparse n-grams needs a far larger step than the transformer).
    """

    buckets: int = 1 << 17
    dim: int = 32
    ngrams: tuple[int, ...] = (1, 2, 3)
    lr_scale: float = 20.0

    @classmethod
    def from_dict(cls, d: dict | None) -> WideConfig | None:
        return None if not d else cls(**{**d, "ngrams": tuple(d.get("ngrams", cls.ngrams))})


ARCHS = {
    "tiny": Arch(),  # 4 layers, hidden 128: ~0.2 s per step at batch 32 x 32 tokens on 2 cores
    "micro": Arch(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),  # tests
}


def load_backbone(init_dir: str | Path | None, arch: Arch, vocab_size: int) -> ErnieModel:
    if init_dir is None:
        return ErnieModel(arch.ernie_config(vocab_size))
    init_dir = Path(init_dir)
    if not (init_dir / "config.json").is_file() and not (init_dir / "model_config.json").is_file():
        raise FileNotFoundError(f"{init_dir}: not a paddlenlp checkpoint folder (no config.json)")
    with contextlib.redirect_stdout(io.StringIO()):
        model = ErnieModel.from_pretrained(str(init_dir))
    if model.config.vocab_size != vocab_size:
        raise ValueError(
            f"{init_dir}: model vocab_size {model.config.vocab_size} != vocab.txt size {vocab_size}"
        )
    return model


def mean_pool(backbone: ErnieModel, input_ids):
    """Mean of the last token states, padding excluded."""
    sequence = backbone(input_ids, return_dict=False)[0]
    mask = (input_ids != backbone.config.pad_token_id).astype(sequence.dtype).unsqueeze(-1)
    return (sequence * mask).sum(axis=1) / mask.sum(axis=1).clip(min=1.0)


# odd 20-bit multipliers of the n-gram hash (ids stay far below 2**20, so no int64 overflow)
_HASH_PRIMES = (1000003, 999983, 1000211, 998651)


class HashedNgramBag(nn.Layer):
    """Mean of the embeddings of the character 1..n-grams of `input_ids`, hashed into `buckets` rows.

    Computed from `input_ids` inside the graph (slices, integer arithmetic, one embedding lookup), so the
    exported program keeps its single input. An n-gram is counted when none of its tokens is padding.
    """

    def __init__(self, config: WideConfig, pad_token_id: int = 0):
        super().__init__()
        if config.buckets < 2 or config.dim < 1 or not config.ngrams or min(config.ngrams) < 1:
            raise ValueError(f"bad wide branch {config}")
        if max(config.ngrams) > len(_HASH_PRIMES):
            raise ValueError(f"n-grams up to {len(_HASH_PRIMES)} are supported, got {config.ngrams}")
        self.config = config
        self.pad_token_id = pad_token_id
        self.embedding = nn.Embedding(
            config.buckets, config.dim, weight_attr=paddle.ParamAttr(learning_rate=config.lr_scale)
        )

    def ngram_ids(self, input_ids):
        """(hashed ids, validity mask) of every n-gram, concatenated along the sequence axis."""

        # int64 tensor constants, never Python scalars: `ids * 1000003` becomes a float32 `scale` op in the
        # ONNX conversion, which rounds large products and hashes differently from Paddle
        def const(value: int):
            return paddle.full([1], value, dtype="int64")

        ids, masks = [], []
        for n in self.config.ngrams:
            parts = [input_ids[:, k : (k - n + 1) or None] for k in range(n)]
            h = paddle.add(paddle.multiply(parts[0], const(_HASH_PRIMES[0])), const(n))
            valid = parts[0] != self.pad_token_id
            for k in range(1, n):
                h = paddle.add(h, paddle.multiply(parts[k], const(_HASH_PRIMES[k])))
                valid = paddle.logical_and(valid, parts[k] != self.pad_token_id)
            ids.append(paddle.remainder(h, const(self.config.buckets)))
            masks.append(valid)
        return paddle.concat(ids, axis=1), paddle.concat(masks, axis=1)

    def forward(self, input_ids):
        ids, valid = self.ngram_ids(input_ids)
        mask = valid.astype("float32").unsqueeze(-1)
        return (self.embedding(ids) * mask).sum(axis=1) / mask.sum(axis=1).clip(min=1.0)


class ErnieClassifier(nn.Layer):
    """Pooled token states -> dropout -> linear: logits over the labels.

    With `wide`, a bag of hashed character n-grams (`HashedNgramBag`) adds its own linear logits: a wide & deep
    classifier in one graph, so the model never does worse than a bag of n-grams on long, keyword-heavy texts
    (reviews) where the tiny transformer alone loses to TF-IDF.

    `pooling="mean"` (default) averages the token states; `"cls"` uses ERNIE's [CLS] pooler, which only means
    something after pre-training with a sentence-level objective (real ERNIE releases). An MLM-only checkpoint
    such as ernie-tiny-cs never trains the pooler, and mean pooling uses its token states better.
    """

    def __init__(
        self,
        backbone: ErnieModel,
        num_labels: int,
        dropout: float = 0.1,
        pooling: str = "mean",
        wide: WideConfig | None = None,
    ):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be mean or cls, got {pooling!r}")
        self.ernie = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)
        self.wide = HashedNgramBag(wide, backbone.config.pad_token_id) if wide else None
        self.wide_classifier = nn.Linear(wide.dim, num_labels) if wide else None

    def forward(self, input_ids):
        if self.pooling == "cls":
            pooled = self.ernie(input_ids, return_dict=False)[1]
        else:
            pooled = mean_pool(self.ernie, input_ids)
        logits = self.classifier(self.dropout(pooled))
        if self.wide is not None:
            logits = logits + self.wide_classifier(self.wide(input_ids))
        return logits


class ErnieSentenceEncoder(nn.Layer):
    """Mean of the token states (padding excluded), L2-normalised: cosine similarity is a dot product."""

    def __init__(self, backbone: ErnieModel):
        super().__init__()
        self.ernie = backbone

    def forward(self, input_ids):
        return F.normalize(mean_pool(self.ernie, input_ids), axis=-1)


class CalibratedClassifier(nn.Layer):
    """What a classifier exports: probabilities softmax(logits / T)."""

    def __init__(self, classifier: ErnieClassifier, temperature: float):
        super().__init__()
        self.classifier = classifier
        self.temperature = float(temperature)

    def forward(self, input_ids):
        return F.softmax(self.classifier(input_ids) / self.temperature, axis=-1)


def save_network(net: nn.Layer, backbone: ErnieModel, out_dir: Path) -> None:
    """Backbone in paddlenlp format (re-usable as --init), whole network weights beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        backbone.save_pretrained(str(out_dir / "backbone"))
    paddle.save(net.state_dict(), str(out_dir / "network.pdparams"))


def load_network(task: str, checkpoint: Path, num_labels: int = 0, pooling: str = "mean") -> nn.Layer:
    """The trained network of a checkpoint folder (its training.json says whether it has a wide branch)."""
    with contextlib.redirect_stdout(io.StringIO()):
        backbone = ErnieModel.from_pretrained(str(checkpoint / "backbone"))
    if task == "classification":
        meta_file = checkpoint / "training.json"
        meta = json.loads(meta_file.read_text("utf-8")) if meta_file.is_file() else {}
        net = ErnieClassifier(
            backbone, num_labels, pooling=pooling, wide=WideConfig.from_dict(meta.get("wide"))
        )
    else:
        net = ErnieSentenceEncoder(backbone)
    net.set_state_dict(paddle.load(str(checkpoint / "network.pdparams")))
    net.eval()
    return net
