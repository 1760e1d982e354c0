"""Build a one-version view of a model repository, so a worker pool serves exactly one pinned version.

    python pin_version.py SOURCE_REPO VIEW_REPO MODEL VERSION

Runs in an init container of a pinned worker pool (workers.<pool>.version or a canary). VIEW_REPO/MODEL gets
a copy of SOURCE_REPO/MODEL/config.yaml whose `version_policy` is `specific: [VERSION]`, a symlink to the
version folder, and symlinks to the model's other top-level files (e.g. the FAQ encoder's thresholds.json).
Other version folders are left out. The worker still verifies the version against its sha256 manifest.
Standard library + PyYAML only (both are in the worker image).

The rollout tool (`python -m services.canary --kubernetes`) moves versions by annotating the pod template, and
the chart hands that annotation to this script through the downward API as `KEFU_PIN_OVERRIDE`:
`kefu.io/stable-<model>` = `<version>` on the stable Deployment (set by `promote`), `kefu.io/canary` =
`<model>=<version>` on the canary Deployment (set by `start`). When it is set it wins over VERSION (the value
rendered from the chart's values), so what the tool patches is what the pods serve; empty = VERSION.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml


def pin(source: Path, view: Path, model: str, version: int) -> Path:
    src, dst = source / model, view / model
    config = src / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"pin_version: {config} does not exist (is {model!r} in the repository?)")
    if not (src / str(version)).is_dir():
        have = sorted(p.name for p in src.iterdir() if p.is_dir() and p.name.isdigit())
        raise SystemExit(f"pin_version: {model!r} has no version {version} under {source} (have {have})")
    cfg = yaml.safe_load(config.read_text("utf-8")) or {}
    cfg["version_policy"] = {"specific": [version]}
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), "utf-8")
    for entry in src.iterdir():
        if entry.name == "config.yaml" or (
            entry.is_dir() and entry.name.isdigit() and entry.name != str(version)
        ):
            continue
        link = dst / entry.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return dst


def override(model: str, value: str) -> str | None:
    """The version an annotation value names for `model` (`2` or `intent=2`); None when empty."""
    value = value.strip()
    if not value:
        return None
    if "=" in value:
        named, value = (part.strip() for part in value.split("=", 1))
        if named != model:
            raise SystemExit(f"pin_version: the annotation names model {named!r}, this pool serves {model!r}")
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"pin_version: the annotation's version {value!r} is not a positive integer")
    return value


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not argv[3].isdigit() or int(argv[3]) < 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    version = argv[3]
    annotated = override(argv[2], os.environ.get("KEFU_PIN_OVERRIDE", ""))
    if annotated is not None and annotated != version:
        print(f"pin_version: the rollout annotation selects version {annotated} (the chart says {version})")
        version = annotated
    dst = pin(Path(argv[0]), Path(argv[1]), argv[2], int(version))
    print(f"pin_version: {dst} serves {argv[2]} version {version} only")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
