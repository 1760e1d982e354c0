"""Write the dashboards of `grafana/boards.py` as JSON: `grafana/dashboards/<name>.json` (committed, imported by
hand or provisioned) and the identical copies the Helm chart ships as sidecar ConfigMaps, `helm/files/dashboards/`.

    python -m grafana.generate           # regenerate (make dashboards)
    python -m grafana.generate --check   # exit 1 when a committed file differs from what the code generates
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana.boards import DASHBOARDS

ROOT = Path(__file__).resolve().parent.parent
OUT_DIRS = (ROOT / "grafana" / "dashboards", ROOT / "helm" / "files" / "dashboards")


def render() -> dict[str, str]:
    """{file name: JSON text} for every dashboard; stable key order and a trailing newline."""
    return {
        f"{name}.json": json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def stale(out_dirs=OUT_DIRS) -> list[str]:
    """Paths whose content differs from the generator's output (missing, changed or left over)."""
    files = render()
    bad = []
    for d in out_dirs:
        for name, text in files.items():
            path = d / name
            if not path.exists() or path.read_text("utf-8") != text:
                bad.append(str(path))
        bad += [str(p) for p in sorted(d.glob("*.json")) if p.name not in files]
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed JSON is out of date")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"out of date: {path} (run make dashboards)", file=sys.stderr)
        print(f"dashboards: {len(render())} generated, {len(bad)} stale files")
        return 1 if bad else 0
    for d in OUT_DIRS:
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.json"):
            if old.name not in DASHBOARDS and old.stem not in DASHBOARDS:
                old.unlink()
        for name, text in render().items():
            (d / name).write_text(text, "utf-8")
            print(f"wrote {d / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
