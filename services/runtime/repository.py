"""The versioned model repository (Triton-style layout).

    <repo>/<model>/config.yaml          task, labels, inputs/outputs, limits, version policy
    <repo>/<model>/<version>/           one folder per integer version
        inference.json                  Paddle PIR program (paddle.jit.save)
        inference.pdiparams             weights
        vocab.txt, tokenizer.json       how to tokenise
        labels.txt                      classifiers only, one label per output index
        evaluation.json                 the report the version was exported with
        training.json                   how it was trained (data hashes, hyper-parameters)
        manifest.json                   sha256 and size of every other file

The server reads `config.yaml`; it never guesses from file names. A version whose files do not match their
manifest is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.runtime.tokenizer import ErnieTextTokenizer, TokenizerSettings

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
MODEL_FILES = ("inference.json", "inference.pdiparams")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # one path component; never "." or ".."


class RepositoryError(Exception):
    """The model repository is malformed, or a version cannot be used."""


class InvalidModelName(RepositoryError):
    """A model name that is not one plain folder name inside the repository (e.g. `..`, `a/b`, a symlink out)."""


class ManifestError(RepositoryError):
    """A version's files do not match its manifest (tampered, truncated or incomplete)."""


class Task(StrEnum):
    CLASSIFICATION = "classification"
    EMBEDDING = "embedding"


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    datatype: Literal["INT64", "FP32", "BYTES"]
    dims: list[int] = Field(description="-1 marks a dynamic dimension; the first is the batch")


class VersionPolicy(BaseModel):
    """Which versions serve. Exactly one of latest / all / specific (Triton semantics)."""

    model_config = ConfigDict(extra="forbid")
    latest: int | None = Field(default=None, ge=1, description="serve the N highest versions")
    all: bool = False
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        kinds = sum([self.latest is not None, self.all, self.specific is not None])
        if kinds == 0:
            self.latest = 1
        elif kinds > 1:
            raise ValueError("version_policy takes exactly one of latest, all, specific")
        return self

    def select(self, available: list[int]) -> list[int]:
        available = sorted(available)
        if self.all:
            return available
        if self.specific is not None:
            return [v for v in available if v in set(self.specific)]
        return available[-(self.latest or 1) :]


class ModelConfig(BaseModel):
    """`<repo>/<model>/config.yaml`."""

    model_config = ConfigDict(extra="forbid")
    name: str
    task: Task
    platform: Literal["paddle_inference"] = "paddle_inference"
    labels: list[str] = Field(default_factory=list, description="classifier output order (latest version)")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = Field(ge=1)
    max_seq_len: int = Field(ge=3)
    embedding_dim: int | None = None
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return cls.model_validate(data)
        except (OSError, yaml.YAMLError, ValidationError) as e:
            raise RepositoryError(f"{path}: {e}") from e

    def save(self, path: Path) -> None:
        path.write_text(
            yaml.safe_dump(self.model_dump(mode="json"), allow_unicode=True, sort_keys=False), "utf-8"
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(version_dir: Path) -> dict:
    files = {
        p.relative_to(version_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(version_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"files": files}
    (version_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def verify_manifest(version_dir: Path) -> None:
    """Raise ManifestError unless every file is listed with the right sha256, and none is missing or extra."""
    path = version_dir / MANIFEST
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError) as e:
        raise ManifestError(f"{version_dir}: unreadable {MANIFEST}: {e}") from e
    present = {
        p.relative_to(version_dir).as_posix()
        for p in version_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST
    }
    if missing := sorted(set(listed) - present):
        raise ManifestError(f"{version_dir}: files listed in {MANIFEST} are missing: {missing}")
    if extra := sorted(present - set(listed)):
        raise ManifestError(f"{version_dir}: files not listed in {MANIFEST}: {extra}")
    for name, meta in listed.items():
        actual = sha256_file(version_dir / name)
        if actual != meta["sha256"]:
            raise ManifestError(
                f"{version_dir}: {name} has sha256 {actual[:12]}…, manifest says {meta['sha256'][:12]}…"
            )


class ModelVersion:
    """One exported version on disk, verified against its manifest when opened."""

    def __init__(
        self,
        model_dir: Path,
        version: int,
        config: ModelConfig,
        verify: bool = True,
        path: Path | None = None,
    ):
        self.model_dir = model_dir
        self.version = version
        self.config = config
        self.path = path or model_dir / str(version)  # `path` only for a version still being staged by export
        if not self.path.is_dir():
            raise RepositoryError(f"{model_dir.name} has no version {version}")
        if verify:
            verify_manifest(self.path)
        self.tokenizer_settings = TokenizerSettings.load(self.path / "tokenizer.json")
        labels_file = self.path / "labels.txt"
        self.labels = labels_file.read_text("utf-8").splitlines() if labels_file.exists() else []

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILES[0]

    @property
    def params_file(self) -> Path:
        return self.path / MODEL_FILES[1]

    def tokenizer(self) -> ErnieTextTokenizer:
        return ErnieTextTokenizer.from_settings(self.path, self.tokenizer_settings)

    def evaluation(self) -> dict:
        return json.loads((self.path / "evaluation.json").read_text("utf-8"))


class ModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG).is_file())

    def model_dir(self, name: str) -> Path:
        """`<root>/<name>`, once `name` matches MODEL_NAME and the resolved folder is proven to lie inside the
        resolved root (a symlink pointing out of the repository is refused too). Messages never name the root."""
        if not MODEL_NAME.fullmatch(name):
            raise InvalidModelName(
                f"invalid model name {name[:64]!r}: letters, digits, '.', '_' and '-' only, starting with a "
                "letter or digit, at most 128 characters"
            )
        root = self.root.resolve()
        if not (root / name).resolve().is_relative_to(root):
            raise InvalidModelName(f"model {name!r} points outside the model repository")
        return self.root / name

    def config(self, name: str) -> ModelConfig:
        path = self.model_dir(name) / CONFIG
        if not path.is_file():
            raise RepositoryError(f"no model named {name!r} in the repository")
        return ModelConfig.load(path)

    def versions(self, name: str) -> list[int]:
        model_dir = self.model_dir(name)
        return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def serving_versions(self, name: str) -> list[int]:
        return self.config(name).version_policy.select(self.versions(name))

    def open(self, name: str, version: int | None = None, verify: bool = True) -> ModelVersion:
        config = self.config(name)
        if version is None:
            serving = config.version_policy.select(self.versions(name))
            if not serving:
                raise RepositoryError(f"model {name!r} has no version its version policy serves")
            version = serving[-1]
        return ModelVersion(self.model_dir(name), version, config, verify=verify)
