"""Print what a model repository serves: models, versions the policy selects, and their dev figures.

python -m services.runtime.status --repository model_repository
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.runtime.repository import ModelRepository, RepositoryError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.runtime.status", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = p.parse_args(argv)
    repo = ModelRepository(args.repository)
    names = repo.model_names()
    if not names:
        print(f"{args.repository}: no models (run `make models`)", file=sys.stderr)
        return 1
    for name in names:
        try:
            version = repo.open(name)  # verifies the manifest
        except RepositoryError as e:
            print(f"{name}: UNUSABLE: {e}")
            continue
        report = version.evaluation()
        keys = (
            ("accuracy", "macro_f1", "ece") if "accuracy" in report else ("recall_at_1", "recall_at_5", "mrr")
        )
        figures = ", ".join(f"{k}={report[k]}" for k in keys)
        print(
            f"{name}: versions {repo.versions(name)}, serving {repo.serving_versions(name)}; v{version.version} dev: {figures}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
