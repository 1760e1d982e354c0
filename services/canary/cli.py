"""`python -m services.canary`: canary rollouts of model versions (start, status, analyze, promote, rollback, run).

Target: the local stack's routing file (`--routing-file`) or a cluster (`--kubernetes --namespace --configmap`,
with optional `--canary-deployment` / `--stable-deployment`). Defaults come from KEFU_CANARY_* (settings.py).

    python -m services.canary start    --routing-file routing.yaml --model intent --canary-version 2 --weight 10
    python -m services.canary status   --routing-file routing.yaml
    python -m services.canary analyze  --routing-file routing.yaml --model intent --prometheus http://127.0.0.1:9090
    python -m services.canary promote  --routing-file routing.yaml --model intent
    python -m services.canary rollback --routing-file routing.yaml --model intent
    python -m services.canary run      --routing-file routing.yaml --model intent --canary-version 2 \\
                                       --policy services/canary/policy.yaml --prometheus http://127.0.0.1:9090

Exit codes: 0 done / promoted / analysis passed; 1 rolled back / analysis failed; 2 usage or configuration error;
3 analysis inconclusive (not enough data).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from services.canary.analysis import Analyzer, Status
from services.canary.backends import LocalBackend, RolloutBackend, RolloutError
from services.canary.offline import OfflineGateError, offline_gate
from services.canary.policy import PolicyError, RolloutPolicy
from services.canary.prometheus import PrometheusClient, PrometheusError
from services.canary.rollout import Rollout
from services.canary.routing import ModelRoute, RoutingError
from services.canary.settings import CanarySettings

EXIT_OK, EXIT_ROLLED_BACK, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad or missing options; exit code 2."""


def _parser(settings: CanarySettings) -> argparse.ArgumentParser:
    target = argparse.ArgumentParser(add_help=False)
    g = target.add_argument_group("target")
    g.add_argument(
        "--routing-file", type=Path, help="local stack routing file (default: KEFU_CANARY_ROUTING_FILE)"
    )
    g.add_argument("--kubernetes", action="store_true", help="change the routing ConfigMap through the API")
    g.add_argument("--namespace", default=settings.namespace, help="namespace (default %(default)s)")
    g.add_argument("--configmap", default=settings.configmap, help="routing ConfigMap (default %(default)s)")
    g.add_argument("--configmap-key", default=settings.configmap_key, help="key in it (default %(default)s)")
    g.add_argument(
        "--canary-deployment", default=settings.canary_deployment, help="canary Deployment to scale"
    )
    g.add_argument(
        "--stable-deployment", default=settings.stable_deployment, help="stable Deployment to tell"
    )
    g.add_argument("--container", default=settings.container, help="container for the canary env")
    g.add_argument("--canary-replicas", type=int, default=settings.canary_replicas)
    g.add_argument(
        "--wait-ready", type=float, default=settings.wait_ready_s, help="seconds to wait for canary pods"
    )
    g.add_argument(
        "--kubeconfig", default=settings.kubeconfig, help="kubeconfig (default: in-cluster/~/.kube)"
    )
    g.add_argument("--context", default=settings.context, help="kubeconfig context")

    prom = argparse.ArgumentParser(add_help=False)
    prom.add_argument("--prometheus", default=settings.prometheus, help="Prometheus base URL")
    prom.add_argument("--policy", type=Path, default=settings.policy, help="policy YAML (gates, thresholds)")
    prom.add_argument(
        "--repository", type=Path, default=settings.repository, help="model repository (offline gate)"
    )

    p = argparse.ArgumentParser(prog="python -m services.canary", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("start", parents=[target], help="route a share of traffic to a canary version")
    s.add_argument("--model", required=True)
    s.add_argument("--canary-version", required=True)
    s.add_argument("--weight", type=float, default=0, help="canary traffic %% (default 0: shadow only)")
    s.add_argument(
        "--shadow", type=float, default=0, help="%% of stable-served requests mirrored to the canary"
    )
    s.add_argument("--stable", help="stable version, when the model is not in the routing yet")

    s = sub.add_parser("status", parents=[target], help="print the routing")
    s.add_argument("--model", help="one model (default: all)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("analyze", parents=[target, prom], help="run the gates now and print the verdict")
    s.add_argument("--model", required=True)
    s.add_argument("--canary-version", help="default: the routing's canary")
    s.add_argument(
        "--window", default=None, help="Prometheus range (default: the policy's first step window)"
    )
    s.add_argument("--json", action="store_true")

    for name, text in (
        ("promote", "make the canary the stable version"),
        ("rollback", "send all traffic to stable"),
    ):
        s = sub.add_parser(name, parents=[target], help=text)
        s.add_argument("--model", required=True)

    s = sub.add_parser("run", parents=[target, prom], help="step through the policy; promote or roll back")
    s.add_argument("--model", required=True)
    s.add_argument("--canary-version", required=True)
    s.add_argument("--stable", help="stable version, when the model is not in the routing yet")
    s.add_argument("--report", type=Path, help="write the outcome and every analysis as JSON here")
    return p


def _backend(args, settings: CanarySettings) -> RolloutBackend:
    if args.kubernetes:
        if args.routing_file is not None:
            raise UsageError("--routing-file and --kubernetes exclude each other")
        from services.canary.kube import KubernetesBackend, api_client_from_config

        return KubernetesBackend(
            api_client_from_config(args.kubeconfig, args.context),
            args.namespace,
            args.configmap,
            key=args.configmap_key,
            canary_deployment=args.canary_deployment,
            stable_deployment=args.stable_deployment,
            container=args.container,
            canary_replicas=args.canary_replicas,
            wait_ready_s=args.wait_ready,
            progress=lambda msg: print(msg, flush=True),
        )
    path = args.routing_file or settings.routing_file
    if path is None:
        raise UsageError("say where the routing lives: --routing-file PATH, or --kubernetes --configmap NAME")
    return LocalBackend(path)


def _prometheus(args, settings: CanarySettings, transport=None) -> PrometheusClient:
    if not args.prometheus:
        raise UsageError("the online gates need --prometheus URL (or KEFU_CANARY_PROMETHEUS)")
    try:
        return PrometheusClient(args.prometheus, settings.prometheus_timeout_s, transport=transport)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _describe(name: str, r: ModelRoute) -> str:
    if r.canary is None:
        return f"{name}: stable {r.stable}, no canary"
    return f"{name}: stable {r.stable}, canary {r.canary} at {r.weight:g}%, shadow {r.shadow:g}%, sticky {r.sticky}"


def main(argv: list[str] | None = None, prometheus_transport=None) -> int:
    """CLI entry; `prometheus_transport` (an httpx transport) lets tests answer Prometheus in-process."""
    try:
        settings = CanarySettings()
    except ValidationError as e:
        print(f"error: KEFU_CANARY_* settings: {e}", file=sys.stderr)
        return EXIT_USAGE
    args = _parser(settings).parse_args(argv)
    try:
        return _dispatch(args, settings, prometheus_transport)
    except (UsageError, RoutingError, PolicyError, OfflineGateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (RolloutError, PrometheusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ROLLED_BACK if args.command == "run" else EXIT_USAGE


def _dispatch(args, settings: CanarySettings, transport) -> int:
    backend = _backend(args, settings)
    if args.command == "start":
        route = backend.start(args.model, args.canary_version, args.weight, args.shadow, stable=args.stable)
        print(f"started: {_describe(args.model, route)}")
        return EXIT_OK
    if args.command == "status":
        config = backend.read()
        models = {args.model: backend.status(args.model)} if args.model else config.models
        if args.json:
            print(json.dumps({m: r.model_dump() for m, r in models.items()}, ensure_ascii=False, indent=2))
        else:
            print(f"routing of {backend.target}")
            for name, route in models.items():
                print(f"  {_describe(name, route)}")
        return EXIT_OK
    if args.command == "promote":
        print(f"promoted: {_describe(args.model, backend.promote(args.model))}")
        return EXIT_OK
    if args.command == "rollback":
        print(f"rolled back: {_describe(args.model, backend.rollback(args.model))}")
        return EXIT_OK
    policy = RolloutPolicy.load(args.policy)
    if args.command == "analyze":
        return _analyze(args, backend, policy, settings, transport)
    for v in (args.canary_version, args.stable):
        if v is not None and not v.strip():
            raise UsageError("versions must not be empty")
    with _prometheus(args, settings, transport) if _online(policy) else _Null() as prom:
        analyzer = Analyzer(prom, policy.gates) if prom is not None else None
        rollout = Rollout(backend, policy, analyzer, args.repository, out=lambda msg: print(msg, flush=True))
        outcome = rollout.run(args.model, args.canary_version, stable=args.stable)
    if args.report is not None:
        args.report.write_text(json.dumps(outcome.to_dict(), ensure_ascii=False, indent=2) + "\n", "utf-8")
    if outcome.promoted:
        print(f"result: PROMOTED {args.model} version {args.canary_version}")
        return EXIT_OK
    print(f"result: ROLLED BACK {args.model} version {args.canary_version}")
    for g in outcome.failed:
        print(f"  failed gate {g.name}: {g.message}")
    return EXIT_ROLLED_BACK


def _analyze(args, backend: RolloutBackend, policy: RolloutPolicy, settings, transport) -> int:
    route = backend.status(args.model)
    canary = args.canary_version or route.canary
    if canary is None:
        raise UsageError(f"{args.model} has no canary in the routing: pass --canary-version")
    window = args.window or policy.window_of(policy.steps[0])
    with _prometheus(args, settings, transport) as prom:
        analysis = Analyzer(prom, policy.gates).analyze(args.model, route.stable, canary, window)
    if args.repository is not None and policy.offline is not None:
        repo = args.repository / args.model
        analysis.results.insert(0, offline_gate(repo / route.stable, repo / canary, policy.offline))
    if args.json:
        print(json.dumps(analysis.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(analysis.table())
    return {Status.PASS: EXIT_OK, Status.FAIL: EXIT_ROLLED_BACK}.get(analysis.verdict, EXIT_INCONCLUSIVE)


def _online(policy: RolloutPolicy) -> bool:
    return any(getattr(policy.gates, n) is not None for n in type(policy.gates).model_fields)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc: object) -> None:
        return None
