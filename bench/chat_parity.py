"""Same answers before and after a throughput change (issue 15): every dev chat message through a local stack.

    python -m bench.chat_parity run --repository model_repository --out /tmp/after.json
    python -m bench.chat_parity compare /tmp/before.json /tmp/after.json     # exit 1 on any difference

`run` starts `services.stack` (as `make bench-gateway` does: response cache off), sends each message of
`data/chat_eval/chat_dev.jsonl` as a fresh session to `POST /v1/chat`, and records per message id: the action,
the FAQ ids answered or suggested (in order), the intent label, the handoff reason, the degraded modes and the
model versions. Run it on the old tree (copy this file there) and on the new one, then `compare`: identical
actions and FAQ ids is the acceptance; intent and hand-over reason are compared too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx

from bench.gateway_bench import ROOT, LocalStack

DEV = ROOT / "data" / "chat_eval" / "chat_dev.jsonl"
COMPARED = ("action", "faq_ids", "intent", "handoff_reason", "degraded")


def record(answer: dict) -> dict:
    return {
        "action": answer["action"],
        "faq_ids": [h["faq_id"] for h in answer.get("faq_hits") or []],
        "intent": (answer.get("intent") or {}).get("label"),
        "handoff_reason": answer.get("handoff_reason"),
        "degraded": answer.get("degraded") or [],
        "model_versions": answer.get("model_versions") or {},
    }


def run(repository: Path, out: Path) -> int:
    rows = [json.loads(line) for line in DEV.read_text("utf-8").splitlines() if line.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="chat-parity-"))
    stack = LocalStack(repository.resolve(), workdir, 1)
    try:
        stack.wait_ready(900)
        answers = {}
        with httpx.Client(base_url=stack.url, headers={"x-api-key": stack.key}, timeout=30) as client:
            for row in rows:
                r = client.post("/v1/chat", json={"session_id": f"parity-{row['id']}", "text": row["text"]})
                r.raise_for_status()
                answers[row["id"]] = record(r.json())
    finally:
        stack.stop()
    out.write_text(json.dumps(answers, ensure_ascii=False, indent=1) + "\n", "utf-8")
    print(f">> {len(answers)} answers written to {out}")
    return 0


def compare(before: Path, after: Path) -> int:
    a, b = (json.loads(p.read_text("utf-8")) for p in (before, after))
    if set(a) != set(b):
        print(f"different messages: {sorted(set(a) ^ set(b))[:10]}")
        return 1
    differ = [(i, f, a[i][f], b[i][f]) for i in sorted(a) for f in COMPARED if a[i][f] != b[i][f]]
    for i, field, old, new in differ:
        print(f"{i}: {field} {old!r} -> {new!r}")
    actions = sum(1 for i in a if a[i]["action"] == b[i]["action"])
    faqs = sum(1 for i in a if a[i]["faq_ids"] == b[i]["faq_ids"])
    print(f">> {len(a)} messages: actions identical {actions}/{len(a)}, FAQ ids identical {faqs}/{len(a)}")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chat_parity", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="answers of the dev chat set from a local stack")
    r.add_argument("--repository", type=Path, default=Path("model_repository"))
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="exit 1 when two runs differ")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = p.parse_args(argv)
    if args.command == "run":
        return run(args.repository, args.out)
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
