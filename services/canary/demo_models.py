"""The model versions of `make canary-demo`, built in a COPY of the model repository (never the source).

    repo = prepare_repository(source, out / "repo")           # serving versions; intent's is v1, serves all
    build_v2(repo, out / "train-v2", train=True)              # a retrained intent v2 (seed 7 instead of 42)
    build_v3(repo)                                             # v2 exported with its labels permuted

- v2 is trained from the same pre-trained checkpoint and data as the shipped v1 (`models/defaults.py`'s intent
  settings: 20 epochs, early stopping) with another seed (7; v1 used 42), about 1.5 min on 2 cores, then exported
  with `python -m export`, which evaluates it on the same dev file (so the offline gate compares like with like). `train=False` re-packages v1's weights as v2
  instead (for the fast end-to-end test: no training).
- v3 is v2 with `labels.txt` rotated by one (label i names output i+1): the manifest is rewritten so the worker
  accepts it, and v2's evaluation report is kept, i.e. a packaging bug made after evaluation, which the offline
  gate cannot see. Every answer it gives is a wrong label with v2's confidence: what the shadow agreement gate
  (and the label-shift gate) must catch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from services.runtime.repository import CONFIG, ModelConfig, write_manifest

ROOT = Path(__file__).resolve().parents[2]
INTENT_DATA = ROOT / "data" / "intent_cs_demo"
PRETRAINED = ROOT / "models" / "pretrained" / "ernie-tiny-cs"
MODELS = ("intent", "sentiment", "faq")
MODEL = "intent"


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(d.name) for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit())


def source_repository(preferred: Path) -> Path:
    """`preferred` when it holds the three default models (a `make models` result), else the committed ones."""

    def complete(root: Path) -> bool:
        return all((root / m / CONFIG).is_file() and _versions(root / m) for m in MODELS)

    if complete(preferred):
        return preferred
    shipped = ROOT / "models" / "shipped"
    if complete(shipped):
        return shipped
    raise FileNotFoundError(f"no default models in {preferred} or {shipped}: run `make models`")


def prepare_repository(source: Path, repo: Path, out: Callable[[str], None] = print) -> Path:
    """A fresh copy of the serving (highest) version of every model; intent's is numbered 1 (the demo's stable,
    whatever number it has in `source`) and intent's version policy serves all versions."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    for model in MODELS:
        (repo / model).mkdir()
        serving = _versions(source / model)[-1]
        number = 1 if model == MODEL else serving
        shutil.copytree(source / model / str(serving), repo / model / str(number))
        for entry in (source / model).iterdir():
            if entry.is_file():
                shutil.copy2(entry, repo / model / entry.name)
        if number != serving:
            _set_report_version(
                repo / model / str(number), number, note=f"{source / model}/{serving} renumbered {number}"
            )
            write_manifest(repo / model / str(number))
            out(f"{model}: the serving version {serving} is the demo's v{number}")
    _rebase_evaluation(repo / MODEL / "1", out)
    serve_all_versions(repo / MODEL)
    out(f"model repository copy: {repo} (from {source})")
    return repo


def serve_all_versions(model_dir: Path) -> None:
    config = ModelConfig.load(model_dir / CONFIG)
    config.version_policy = config.version_policy.model_validate({"all": True})
    config.save(model_dir / CONFIG)


def _rebase_evaluation(version_dir: Path, out: Callable[[str], None]) -> None:
    """v1's report names the dev file by the path it was evaluated at; on another checkout, evaluate it again
    here (same file content, this checkout's path) so the offline gate compares v2 on the same set."""
    report = json.loads((version_dir / "evaluation.json").read_text("utf-8"))
    dev = str(INTENT_DATA / "dev.jsonl")
    if report.get("data") == dev:
        return
    out(f"v1's evaluation names {report.get('data')}: evaluating it again on {dev}")
    from models.evaluate import evaluate, open_version

    fresh = evaluate(open_version(version_dir), Path(dev))
    (version_dir / "evaluation.json").write_text(
        json.dumps(fresh, ensure_ascii=False, indent=2) + "\n", "utf-8"
    )
    write_manifest(version_dir)


def build_v2(
    repo: Path, workdir: Path, train: bool = True, seed: int = 7, epochs: int = 20, out=print
) -> Path:
    """Intent v2: retrained (another seed, `epochs`) and exported, or v1's weights re-packaged (`train=False`)."""
    target = repo / MODEL / "2"
    if not train:
        shutil.copytree(repo / MODEL / "1", target)
        _set_report_version(target, 2, note="v1's weights re-packaged as v2 (no training)")
        write_manifest(target)
        serve_all_versions(repo / MODEL)
        out("intent v2: v1's weights re-packaged (no training)")
        return target
    checkpoint = workdir / "checkpoint"
    options = {"seed": seed, "epochs": epochs}
    stamp = workdir / "options.json"
    if (
        (checkpoint / "training.json").is_file()
        and stamp.is_file()
        and json.loads(stamp.read_text()) == options
    ):
        out(f"intent v2: reusing the checkpoint trained earlier in {checkpoint} ({options})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        out(f"intent v2: training from {PRETRAINED.name} with seed {seed}, {epochs} epochs (v1: seed 42, 20)")
        _run([
            "-m", "models.train", "--task", "intent", "--init", str(PRETRAINED),
            "--train", str(INTENT_DATA / "train.jsonl"), "--dev", str(INTENT_DATA / "dev.jsonl"),
            "--labels", str(INTENT_DATA / "labels.txt"), "--out", str(checkpoint),
            "--max-seq-len", "32", "--lr", "3e-4", "--patience", "5",
            "--epochs", str(epochs), "--seed", str(seed), "--no-progress",
        ], out, workdir / "train.log")  # fmt: skip
        stamp.write_text(json.dumps(options))
    out("intent v2: exporting (parity check and evaluation on the dev set)")
    _run(["-m", "export", "--checkpoint", str(checkpoint), "--repository", str(repo), "--name", MODEL,
          "--version", "2"], out, workdir / "export.log")  # fmt: skip
    serve_all_versions(repo / MODEL)  # export rewrote config.yaml
    report = json.loads((target / "evaluation.json").read_text("utf-8"))
    out(f"intent v2: dev accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
    return target


def build_v3(repo: Path, out=print) -> Path:
    """Intent v3 = v2 with labels.txt rotated by one; v2's evaluation report kept (the bug came after it)."""
    source, target = repo / MODEL / "2", repo / MODEL / "3"
    shutil.copytree(source, target)
    labels = (target / "labels.txt").read_text("utf-8").splitlines()
    permuted = labels[1:] + labels[:1]
    (target / "labels.txt").write_text("\n".join(permuted) + "\n", "utf-8")
    _set_report_version(
        target, 3, note="v2 packaged with labels.txt rotated by one after evaluation (demo bug)"
    )
    write_manifest(target)
    serve_all_versions(repo / MODEL)
    out(f"intent v3: v2 with permuted labels (output 0 is now {permuted[0]!r}, was {labels[0]!r})")
    return target


def _set_report_version(version_dir: Path, version: int, note: str) -> None:
    path = version_dir / "evaluation.json"
    report = json.loads(path.read_text("utf-8"))
    report["version"] = version
    report["note"] = note
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
    meta = version_dir / "training.json"
    if meta.is_file():
        data = json.loads(meta.read_text("utf-8"))
        data["note"] = note
        meta.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8")


def _run(args: list[str], out, log: Path | None = None, every_s: float = 15.0) -> None:
    """Run `python <args>` with its output in `log`, a progress line every `every_s`; the log's tail on failure."""
    started = time.monotonic()
    log = log or Path(f"/tmp/kefu-canary-demo-{args[1].replace('.', '-')}.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True
        )
        next_note = started + every_s
        while proc.poll() is None:
            time.sleep(0.5)
            if time.monotonic() >= next_note:
                out(f"   ... {args[1]} running ({time.monotonic() - started:.0f} s)")
                next_note += every_s
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {proc.returncode}, log {log}):\n{tail}")
    out(f"   done in {time.monotonic() - started:.0f} s")


def routing_text(stable: str = "1") -> str:
    return yaml.safe_dump({"models": {MODEL: {"stable": stable}}}, sort_keys=False)
