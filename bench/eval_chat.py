"""`make eval-chat`: the labelled chat set through the real gateway, as a customer meets it.

    python -m bench.eval_chat --repository model_repository              # starts its own local stack
    python -m bench.eval_chat --url http://127.0.0.1:8000 --key KEY       # a stack already running
    python -m bench.eval_chat --policy my-policy.yaml --label after       # another policy file

Every message of `data/chat_eval/chat_dev.jsonl` (see its README: answerable with the expected FAQ, in-domain
unanswerable, angry, neutral) is sent to `POST /v1/chat` as a fresh session, through the stack `make run` starts
(`services.stack`: worker with the served models, milvus-lite server with the demo knowledge base,
gateway with its policy), response cache off. From the answers it prints the rates of issue 12's table:

| rate | over | counts as a hit |
|---|---|---|
| direct_correct | answerable | action answer with the expected FAQ |
| reached | answerable | the expected FAQ answered or among the suggestions |
| wrong_answer | answerable | action answer with another FAQ |
| handoff | answerable | action handoff (any reason) |
| unanswerable_answered | unanswerable | action answer (any FAQ) |
| angry_handoff | angry | action handoff (any reason) |
| neutral_sentiment_handoff | neutral | handoff with reason negative_sentiment |

plus the action mix per kind and the per-intent confusion (expected intent → the intent the gateway reported,
for messages labelled with one), and writes everything, with every answer, to
`bench/results/eval_chat-<label>.json`.

The rates are printed twice: over every message, and over the messages **without a near copy in what the
models learn from** (`TRAINING_TEXTS`: the knowledge base's phrasings, which are also the search index, and the
intent, sentiment and FAQ-pair training sets): a message whose character bigrams overlap a training text's
with a Jaccard similarity of at least `NEAR_COPY` (0.5: 退款能退到别的卡上吗 ~ 退款能退到别的卡吗) is answered
from memory, not understood. An independent set, written by other people, has few such messages, so the
second column is the better guess at what it will measure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from bench.gateway_bench import DEMO_KEY, RESULTS, ROOT, LocalStack
from bench.loadgen import check_loopback

CHAT_SET = ROOT / "data" / "chat_eval" / "chat_dev.jsonl"
# what the served models learn from (and the FAQ search's own index: the KB's phrasings)
TRAINING_TEXTS = (
    ROOT / "data" / "faq_kb_demo" / "faq.jsonl",
    ROOT / "data" / "intent" / "train.jsonl",
    ROOT / "data" / "sentiment" / "train.jsonl",
    ROOT / "data" / "faq_pairs" / "train.jsonl",
)
NEAR_COPY = 0.5  # character-bigram Jaccard at or above which a message is a near copy of a training text
KINDS = ("answerable", "unanswerable", "angry", "neutral")
# (name, kind it is measured over, what the README table calls it, target, higher is better)
RATES = (
    ("direct_correct", "answerable", "answerable → direct, correct answer", 0.80, True),
    ("reached", "answerable", "answerable → right FAQ reached (answer or suggestion)", 0.95, True),
    ("wrong_answer", "answerable", "answerable → a wrong answer", 0.03, False),
    ("handoff", "answerable", "answerable → handed to a human", 0.03, False),
    ("unanswerable_answered", "unanswerable", "not covered by the KB → answered anyway", 0.10, False),
    ("angry_handoff", "angry", "angry → handed to a human", 0.90, True),
    ("neutral_sentiment_handoff", "neutral", "neutral → handed over for sentiment", 0.01, False),
)


def read_chat_set(path: Path) -> list[dict]:
    """The labelled messages; a malformed row raises ValueError naming its line."""
    rows = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("kind") not in KINDS or not str(row.get("text", "")).strip():
            raise ValueError(f"{path}:{n}: needs a text and a kind in {KINDS}")
        if (row["kind"] == "answerable") != bool(row.get("faq_id")):
            raise ValueError(f"{path}:{n}: answerable rows (and only they) name the expected faq_id")
        rows.append(row)
    return rows


def _bigrams(text: str) -> frozenset[str]:
    text = "".join(text.split())
    return frozenset(text[i : i + 2] for i in range(len(text) - 1)) or frozenset([text])


def _texts_of(record: dict) -> list[str]:
    """The texts of one training record, whatever the file: KB FAQ, classification row or text pair."""
    keys = ("question", "alternatives", "text", "text_a", "text_b")
    out: list[str] = []
    for key in keys:
        value = record.get(key)
        out += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return out


def near_copies(
    rows: list[dict], sources: tuple[Path, ...] = TRAINING_TEXTS, near: float = NEAR_COPY
) -> dict:
    """{message id: (jaccard, training text)} for the messages with a training text at least `near` alike."""
    index: dict[str, set[int]] = defaultdict(set)
    grams: list[frozenset[str]] = []
    texts: list[str] = []
    seen: set[str] = set()
    for path in sources:
        for line in path.read_text("utf-8").splitlines():
            for text in _texts_of(json.loads(line)) if line.strip() else []:
                if text in seen:
                    continue
                seen.add(text)
                for gram in _bigrams(text):
                    index[gram].add(len(texts))
                grams.append(_bigrams(text))
                texts.append(text)
    found = {}
    for row in rows:
        mine = _bigrams(row["text"])
        candidates = set().union(*(index.get(g, set()) for g in mine))
        best = max(
            ((len(mine & grams[i]) / len(mine | grams[i]), texts[i]) for i in candidates), default=None
        )
        if best is not None and best[0] >= near:
            found[row["id"]] = (round(best[0], 2), best[1])
    return found


def outcome(row: dict, answer: dict) -> dict:
    """What one message measured: which rates it counts towards."""
    action = answer.get("action")
    ids = [h.get("faq_id") for h in answer.get("faq_hits") or []]
    kind, expected = row["kind"], row.get("faq_id")
    hit = {
        "direct_correct": action == "answer" and ids[:1] == [expected],
        "reached": action in ("answer", "suggest") and expected in ids,
        "wrong_answer": action == "answer" and ids[:1] != [expected],
        "handoff": action == "handoff",
        "unanswerable_answered": action == "answer",
        "angry_handoff": action == "handoff",
        "neutral_sentiment_handoff": action == "handoff"
        and answer.get("handoff_reason") == "negative_sentiment",
    }
    return {name: hit[name] for name, over, *_ in RATES if over == kind}


def rates(rows: list[dict], answers: list[dict]) -> dict:
    """Each rate of RATES over its kind's messages: value, n, target, met."""
    counts: dict[str, Counter] = defaultdict(Counter)
    totals = Counter(r["kind"] for r in rows)
    for row, answer in zip(rows, answers, strict=True):
        for name, value in outcome(row, answer).items():
            counts[row["kind"]][name] += int(value)
    out = {}
    for name, over, _, target, higher in RATES:
        n = totals[over]
        value = counts[over][name] / n if n else 0.0
        met = value >= target if higher else value <= target
        out[name] = {"value": round(value, 4), "n": n, "target": target, "met": met}
    return out


def report(rows: list[dict], answers: list[dict], near: dict | None = None) -> dict:
    """The rates (over every message and over those without a near copy in `near`), the action mix per kind
    and the per-intent confusion."""
    near = near or {}
    totals = Counter(r["kind"] for r in rows)
    actions: dict[str, Counter] = defaultdict(Counter)
    confusion: dict[str, Counter] = defaultdict(Counter)
    unseen = [(r, a) for r, a in zip(rows, answers, strict=True) if r["id"] not in near]
    for row, answer in zip(rows, answers, strict=True):
        act = answer.get("action", "error")
        if act == "handoff":
            act = f"handoff:{answer.get('handoff_reason')}"
        actions[row["kind"]][act] += 1
        if row.get("intent"):
            confusion[row["intent"]][(answer.get("intent") or {}).get("label", "(none)")] += 1
    per_intent = {
        label: {
            "n": sum(c.values()),
            "correct": round(c[label] / sum(c.values()), 4),
            "predicted": dict(c.most_common()),
        }
        for label, c in sorted(confusion.items())
    }
    return {
        "rates": rates(rows, answers),
        "rates_without_near_copies": rates([r for r, _ in unseen], [a for _, a in unseen]),
        "near_copies": {"threshold": NEAR_COPY, "messages": dict(sorted(near.items()))},
        "messages": dict(totals),
        "actions": {k: dict(v.most_common()) for k, v in actions.items()},
        "intent_confusion": per_intent,
    }


def print_report(result: dict) -> None:
    print(f"\n{'rate':<58} {'value':>7} {'target':>8}  {'n':<4}      {'no near copy':>12}  n")
    for name, _, title, target, higher in RATES:
        r, u = result["rates"][name], result["rates_without_near_copies"][name]
        sign = "≥" if higher else "≤"
        mark, umark = ("ok" if x["met"] else "MISSED" for x in (r, u))
        print(
            f"{title:<58} {r['value'] * 100:6.1f}% {sign}{target * 100:5.0f}%  {r['n']:<4} {mark:<6}"
            f"   {u['value'] * 100:6.1f}%  {u['n']:<4} {umark}"
        )
    n_near = len(result["near_copies"]["messages"])
    print(
        f"({n_near} messages have a near copy in the training data, character-bigram Jaccard >= "
        f"{result['near_copies']['threshold']}: the second column leaves them out)"
    )
    print("\nactions per kind:")
    for kind, mix in result["actions"].items():
        print(f"  {kind:<13} " + ", ".join(f"{a} {n}" for a, n in mix.items()))
    print("\nintent confusion (expected → reported):")
    for label, c in result["intent_confusion"].items():
        others = ", ".join(f"{p} {n}" for p, n in c["predicted"].items() if p != label)
        print(f"  {label:<8} n={c['n']:<4} correct {c['correct'] * 100:5.1f}%   {others}")


def run(url: str, key: str, rows: list[dict], timeout_s: float) -> list[dict]:
    """Each message as a fresh session, one at a time (the set is small; sequential keeps the stack quiet)."""
    answers = []
    headers = {"X-API-Key": key}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout_s) as client:
        for i, row in enumerate(rows, 1):
            body = {"session_id": f"eval-{uuid.uuid4().hex[:16]}", "text": row["text"]}
            resp = client.post("/v1/chat", json=body)
            if resp.status_code != 200:
                answers.append({"action": "error", "status": resp.status_code})
            else:
                answers.append(resp.json())
            if i % 50 == 0 or i == len(rows):
                print(f"   {i}/{len(rows)} messages", flush=True)
    return answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="for the local stack")
    p.add_argument("--url", default=None, help="a running gateway (loopback only) instead of a local stack")
    p.add_argument("--key", default=DEMO_KEY, help="API key for --url (scope chat)")
    p.add_argument(
        "--internal-url",
        default="http://127.0.0.1:9000",
        help="with --url: that gateway's internal port (detailed /readyz: models and knowledge base)",
    )
    p.add_argument("--data", type=Path, default=CHAT_SET, help="labelled chat set (JSONL)")
    p.add_argument("--policy", type=Path, default=None, help="policy file for the local stack's gateway")
    p.add_argument("--label", default="current", help="names the result file: eval_chat-<label>.json")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    try:
        rows = read_chat_set(args.data)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stack = None
    workdir = Path(tempfile.mkdtemp(prefix="eval-chat-"))
    try:
        if args.url:
            check_loopback(args.url)
            check_loopback(args.internal_url)
            url, key, internal_url = args.url.rstrip("/"), args.key, args.internal_url.rstrip("/")
        else:
            if args.policy is not None:  # the stack passes its environment on to the gateway
                os.environ["KEFU_GATEWAY_POLICY_FILE"] = str(args.policy.resolve())
            print(f">> starting the local stack (logs in {workdir})", flush=True)
            stack = LocalStack(args.repository.resolve(), workdir, 1)
            stack.wait_ready(900)
            url, key, internal_url = stack.url, stack.key, stack.internal_url
        info = httpx.get(internal_url + "/readyz", timeout=5).json()  # the public /readyz says only ready
        print(f">> {len(rows)} messages, each a fresh session, to {url}/v1/chat", flush=True)
        answers = run(url, key, rows, args.timeout)
    except (RuntimeError, ValueError, OSError, httpx.HTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop()
    result = report(rows, answers, near_copies(rows))
    print_report(result)
    result |= {
        "label": args.label,
        "data": str(args.data),
        "target": args.url or "local stack (cache off)",
        "policy": str(args.policy) if args.policy else "default",
        "models": info.get("upstreams"),
        "knowledge_base": info.get("knowledge_base"),
        "answers": [
            {
                "id": r["id"],
                "kind": r["kind"],
                "expected": r.get("faq_id"),
                "action": a.get("action"),
                "reason": a.get("handoff_reason"),
                "faqs": [h.get("faq_id") for h in a.get("faq_hits") or []],
                "intent": (a.get("intent") or {}).get("label"),
                "intent_confidence": (a.get("intent") or {}).get("confidence"),
                "negative": (a.get("sentiment") or {}).get("negative"),
            }
            for r, a in zip(rows, answers, strict=True)
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"eval_chat-{args.label}.json"
    path.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", "utf-8")
    print(f"\n>> written {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
