"""Static checks of the Dockerfiles (docker/*.Dockerfile): no image can be built or pulled on this machine (no
registry access), so each file is parsed and checked for what the issue asks of an image: pinned bases,
multi-stage build, non-root USER, a wired HEALTHCHECK, COPY sources that exist in the build context, and no
training or test packages in a serving image (which also means no serving import of them)."""

from __future__ import annotations

import ast
import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SERVING = {"gateway": 8000, "worker-cpu": 8001, "worker-gpu": 8001}
HEALTH_PATHS = {"gateway": "/healthz", "worker-cpu": "/v2/health/live", "worker-gpu": "/v2/health/live"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text("utf-8"))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
            assert m, f"{path.name}: cannot parse FROM {rest}"
            stages.append(Stage(m.group(1), m.group(2)))
        elif stages:
            stages[-1].instructions.append((instr, rest))
        elif instr == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def resolve(ref: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ref)


def dockerfiles() -> dict[str, Path]:
    return {p.name.removesuffix(".Dockerfile"): p for p in sorted(DOCKER.glob("*.Dockerfile"))}


def test_the_four_images_exist():
    assert set(dockerfiles()) == {"gateway", "worker-cpu", "worker-gpu", "trainer"}


@pytest.mark.parametrize("image", sorted(dockerfiles()))
def test_bases_are_pinned_and_build_is_multi_stage(image):
    args, stages = parse(dockerfiles()[image])
    names = {s.name for s in stages if s.name}
    assert len(stages) >= 2, f"{image}: not a multi-stage build"
    for stage in stages:
        if stage.base in names:
            continue
        ref = resolve(stage.base, args)
        assert "$" not in ref, f"{image}: base {stage.base} has no ARG default"
        repo, _, tag = ref.rpartition(":")
        assert repo and "/" not in tag, f"{image}: base {ref} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{image}: base {ref} is not a pinned version"
    for instr, rest in (i for s in stages for i in s.instructions):
        if instr == "RUN" and "pip install" in rest:
            unpinned = re.findall(r"pip install (?!-)(?:-\S+\s+)*([A-Za-z][\w.\-]*)(?:\s|$)", rest)
            assert not unpinned, f"{image}: unpinned pip install {unpinned}"


@pytest.mark.parametrize("image", sorted(dockerfiles()))
def test_runs_as_non_root_with_healthcheck(image):
    _, stages = parse(dockerfiles()[image])
    final = stages[-1].instructions
    users = [rest for instr, rest in final if instr == "USER"]
    assert users, f"{image}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{image}: runs as root"
    assert not user.isdigit() or int(user) >= 10000, f"{image}: uid {user} may collide with host users"
    checks = [rest for instr, rest in final if instr == "HEALTHCHECK"]
    assert len(checks) == 1, f"{image}: needs exactly one HEALTHCHECK"
    if image in SERVING:
        assert "CMD" in checks[0] and "urllib.request.urlopen" in checks[0]
        assert f"127.0.0.1:{SERVING[image]}{HEALTH_PATHS[image]}" in checks[0]
        assert "curl" not in checks[0] and "wget" not in checks[0]
        exposed = [rest for instr, rest in final if instr == "EXPOSE"]
        assert exposed == [str(SERVING[image])]
    else:
        assert checks[0] == "NONE", "the trainer is a batch job: HEALTHCHECK NONE, said explicitly"


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text("utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.lstrip("/")) for pat in patterns for p in prefixes)


@pytest.mark.parametrize("image", sorted(dockerfiles()))
def test_copy_sources_exist_in_the_build_context(image):
    _, stages = parse(dockerfiles()[image])
    patterns = _dockerignore()
    copies = [rest for s in stages for instr, rest in s.instructions if instr in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        if "--from=" in rest:
            continue
        tokens = [t for t in rest.split() if not t.startswith("--")]
        for src in tokens[:-1]:
            assert (ROOT / src).exists(), f"{image}: COPY {src}: no such file in the repository"
            assert not _ignored(src, patterns), f"{image}: COPY {src} is excluded by .dockerignore"
    assert not any(_ignored(p, patterns) for p in ("services", "requirements/serving.lock"))


def _extra(name: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    return {re.split(r"[=<>\[;]", r)[0].strip().lower() for r in project["optional-dependencies"][name]}


def _lock(name: str) -> set[str]:
    lines = (ROOT / "requirements" / name).read_text("utf-8").splitlines()
    return {ln.split("==")[0].strip().lower() for ln in lines if "==" in ln and not ln.startswith("#")}


def test_serving_lock_has_no_training_or_test_packages():
    serving = _lock("serving.lock")
    forbidden = (_extra("training") | _extra("dev")) - _extra("serving")
    # a few of those are also ordinary dependencies of serving packages (e.g. tqdm via pymilvus): the ones
    # that must never ship are the training frameworks and the test tools
    must_not_ship = {"paddlenlp", "aistudio-sdk", "datasets", "scikit-learn", "rank-bm25", "onnxruntime",
                     "pytest", "ruff", "schemathesis", "milvus", "helm-python-sdk", "kubernetes-validate", "kmock"}  # fmt: skip
    assert must_not_ship <= forbidden
    assert not (serving & must_not_ship), f"serving.lock carries {sorted(serving & must_not_ship)}"


@pytest.mark.parametrize("image", sorted(SERVING))
def test_serving_images_install_only_the_serving_set(image):
    _, stages = parse(dockerfiles()[image])
    runs = " ".join(rest for s in stages for instr, rest in s.instructions if instr == "RUN")
    copies = [rest for s in stages for instr, rest in s.instructions if instr == "COPY"]
    assert "serving.lock" in runs
    for word in ("dev.lock", "pyproject.toml", "paddlenlp", "--extra training", ".[training"):
        assert word not in runs, f"{image}: installs {word}"
    sources = {t for c in copies if "--from=" not in c for t in c.split()[:-1]}
    assert sources <= {"services/", "requirements/serving.lock"}, f"{image}: copies {sources}"


def test_gpu_worker_is_paddle3_gpu_with_tensorrt_and_no_cpu_paddle():
    args, stages = parse(dockerfiles()["worker-gpu"])
    bases = {resolve(s.base, args) for s in stages}
    assert bases == {"paddlepaddle/paddle:3.0.0-gpu-cuda12.6-cudnn9.5-trt10.5"}
    runs = " ".join(rest for s in stages for instr, rest in s.instructions if instr == "RUN")
    assert "grep -v -E '^paddlepaddle=='" in runs, "the CPU paddlepaddle pin must be dropped from the lock"
    assert "paddlepaddle-gpu==${PADDLE_GPU_VERSION}" in runs and args["PADDLE_GPU_VERSION"] == "3.3.1"
    assert args["PADDLE_INDEX"].startswith("https://www.paddlepaddle.org.cn/packages/stable/cu126")


def test_gateway_image_leaves_paddle_out_and_gateway_never_imports_it():
    _, stages = parse(dockerfiles()["gateway"])
    runs = " ".join(rest for s in stages for instr, rest in s.instructions if instr == "RUN")
    assert "grep -v -E '^paddlepaddle=='" in runs
    roots = [m for m in ("services.gateway.app", "services.gateway.__main__") if _module_file(m)]
    assert roots, "no gateway entry module found"
    external = _external_imports(roots)
    assert {"fastapi", "httpx", "yaml"} <= external, sorted(external)  # the walk reaches the app's deps
    assert not {"paddle", "paddlenlp", "paddle2onnx", "onnxruntime"} & external, sorted(external)


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _external_imports(roots: list[str]) -> set[str]:
    """Top-level package names imported at module level by `roots` and every services.* module they pull in
    (imports inside functions are lazy and do not count)."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        parts = module.split(".")
        for package in (".".join(parts[:i]) for i in range(1, len(parts))):
            todo.append(package)
        body = ast.parse(path.read_text("utf-8")).body
        body += [n for t in body if isinstance(t, ast.Try) for n in t.body]  # optional imports still count
        for node in body:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.If):
                continue  # TYPE_CHECKING blocks
            for name in names:
                if name.split(".")[0] == "services":
                    todo.append(name)
                elif name.split(".")[0] != "__future__":
                    external.add(name.split(".")[0])
    return external
