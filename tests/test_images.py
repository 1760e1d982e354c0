"""Static checks of the Dockerfiles (docker/*.Dockerfile): each file is parsed and checked for what the issue asks
of an image: pinned bases, multi-stage build, non-root USER, a wired HEALTHCHECK, COPY sources that exist in the
build context, no training or test packages in a serving image, and an import graph of every entry point (the
image's own and the chart's commands run in it) that stays inside the code the image copies and never reaches
training code. tests/test_image_run.py runs what each serving image holds."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SERVING = {"gateway": 8000, "worker-cpu": 8001, "worker-gpu": 8001}
INTERNAL = {"gateway": 9000, "worker-cpu": 9001, "worker-gpu": 9001}  # /metrics (+ the gateway's health)
HEALTH = {"gateway": "9000/healthz", "worker-cpu": "8001/v2/health/live", "worker-gpu": "8001/v2/health/live"}


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
        assert f"127.0.0.1:{HEALTH[image]}" in checks[0]
        assert "curl" not in checks[0] and "wget" not in checks[0]
        exposed = [rest for instr, rest in final if instr == "EXPOSE"]
        assert exposed == [f"{SERVING[image]} {INTERNAL[image]}"]
        env = " ".join(rest for instr, rest in final if instr == "ENV")
        prefix = "KEFU_GATEWAY" if image == "gateway" else "KEFU_WORKER"
        assert f"{prefix}_PORT={SERVING[image]}" in env and f"{prefix}_INTERNAL_PORT={INTERNAL[image]}" in env
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
    roots = [m for m in ("services.gateway.api.app", "services.gateway.__main__") if _module_file(m)]
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


# ── the whole import graph of each image's entry points ──────────────────────────────────────────────────

TRAINING_CODE = {"models", "export"}  # serving images never import these (training may import serving code)
FIRST_PARTY = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
IMAGE_VALUES = {
    "gateway": "gateway",
    "workerCpu": "worker-cpu",
    "workerGpu": "worker-gpu",
}  # chart images.<key>
_TOPS = "|".join(sorted(FIRST_PARTY))
IMPORT_STRING = re.compile(rf"^((?:{_TOPS})(?:\.\w+)+):\w+$")  # uvicorn's "pkg.mod:attr"


def _json_list(text: str) -> list[str]:
    return json.loads(text) if text.startswith("[") else text.split()


def copied_packages(image: str) -> set[str]:
    """Top-level folders the final stage copies from the build context (`COPY services/ /app/services/`)."""
    _, stages = parse(dockerfiles()[image])
    copies = [rest for instr, rest in stages[-1].instructions if instr == "COPY" and "--from=" not in rest]
    return {src.strip("/").split("/")[0] for c in copies for src in c.split()[:-1]}


def image_entry_points(image: str) -> list[str]:
    """Modules the image runs: its ENTRYPOINT + CMD (`python -m X`), plus every `python -m` command the chart
    runs in it (e.g. the canary analysis Job in the gateway image)."""
    _, stages = parse(dockerfiles()[image])
    final = stages[-1].instructions
    argv = [a for instr, rest in final if instr in ("ENTRYPOINT", "CMD") for a in _json_list(rest)]
    assert argv[:2] == ["python", "-m"], f"{image}: expected ENTRYPOINT python -m …, got {argv}"
    modules = [argv[2]]
    for tpl in sorted((ROOT / "helm" / "templates").rglob("*.yaml")) + sorted(
        (ROOT / "helm" / "templates").rglob("*.tpl")
    ):
        image_key = None
        for line in tpl.read_text("utf-8").splitlines():
            if m := re.search(r"image:.*\.Values\.images\.(\w+)", line):
                image_key = m.group(1)
            if (m := re.search(r'command: \["python", "-m", "([\w.]+)"', line)) and image_key:
                if IMAGE_VALUES.get(image_key) == image:
                    modules.append(m.group(1))
    return [m if _module_file(m + ".__main__") is None else m + ".__main__" for m in modules]


def _if_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    """Every first-party module `path` imports anywhere (module level, functions, try blocks; not under
    `if TYPE_CHECKING`), with the line: a lazy import runs too, just later. Import strings such as uvicorn's
    "services.gateway.api.app:create_app_from_env" and `importlib.import_module("…")` count as imports."""
    tree = ast.parse(path.read_text("utf-8"))
    skipped = {id(n) for t in ast.walk(tree) if _if_type_checking(t) for b in t.body for n in ast.walk(b)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if m := IMPORT_STRING.match(node.value):
                names = [m.group(1)]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(n, node.lineno) for n in names if n.split(".")[0] in FIRST_PARTY]
    return found


def import_graph(roots: list[str]) -> dict[str, str]:
    """Every first-party module the roots reach, each with how it was first reached ("importer:line")."""
    reached: dict[str, str] = {}
    todo = [(r, "entry point") for r in roots]
    while todo:
        module, via = todo.pop()
        parts = module.split(".")
        for name in [".".join(parts[: i + 1]) for i in range(len(parts))]:  # packages run their __init__
            if name in reached:
                continue
            reached[name] = via
            path = _module_file(name)
            if path is not None:
                todo += [(m, f"{path.relative_to(ROOT)}:{line}") for m, line in _imports_of(path, name)]
    return reached


def test_import_graph_follows_lazy_imports_and_import_strings(tmp_path):
    graph = import_graph(["services.gateway.__main__"])
    assert graph["services.gateway.api.app"].startswith(
        "services/gateway/__main__.py:"
    )  # uvicorn's import string
    assert "services.faq.thresholds" in graph  # module-level import of a module-level import
    lazy = import_graph(["services.faq.thresholds"])
    assert "services.faq.embedders" in lazy  # imported inside main()


@pytest.mark.parametrize("image", sorted(dockerfiles()))
def test_every_entry_point_imports_only_code_the_image_copies(image):
    roots = image_entry_points(image)
    graph = import_graph(roots)
    copied = copied_packages(image)
    outside = {m: via for m, via in graph.items() if m.split(".")[0] not in copied}
    assert not outside, f"{image} ({roots}) imports code it does not copy ({sorted(copied)}): {outside}"
    missing = {m: via for m, via in graph.items() if _module_file(m) is None}
    assert not missing, f"{image}: imports of modules that do not exist: {missing}"


@pytest.mark.parametrize("image", sorted(SERVING))
def test_serving_images_never_reach_training_code(image):
    roots = image_entry_points(image)
    assert roots[0] in ("services.gateway.__main__", "services.worker.__main__")
    if image == "gateway":
        assert "services.canary.__main__" in roots  # the chart's canary analysis Job runs in this image
    graph = import_graph(roots)
    app = {"services.gateway.__main__": "services.gateway.api.app"}.get(
        roots[0], roots[0].replace("__main__", "app")
    )
    assert app in graph, sorted(
        graph
    )  # the walk reaches the app (uvicorn's import string), not just __main__
    training = {m: via for m, via in graph.items() if m.split(".")[0] in TRAINING_CODE}
    assert not training, f"{image}: serving code imports training code: {training}"
