"""What each serving image holds actually starts and answers (issue 11.12).

No registry is reachable from the test machines, so the images are not built here (docker/README.md says how a
real build was done); instead each test lays out exactly what the Dockerfile puts in the image, in a temporary
root folder, and runs it:

- the build stage's RUN commands themselves (the gateway's `grep -v paddlepaddle`, `uv venv`, `uv pip install
  -r <lock>`), with the image's absolute paths moved under the temporary root, so the venv holds that image's
  lock and nothing else (uv's cache makes it a copy, not a download, after the first run);
- the runtime stage's COPY sources (only `services/`, minus what .dockerignore drops), its WORKDIR and ENV;
- its ENTRYPOINT + CMD, with that environment only (no PYTHONPATH, no repository venv), from WORKDIR.

The processes bind loopback and free ports instead of the images' 0.0.0.0:8000/9000 (8001/9001); the worker's
/models is the committed default repository (models/shipped). Not emulated: the base image's system packages
(apt-get RUNs), the non-root user and the read-only root filesystem.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_images import ROOT, _dockerignore, _ignored, _json_list, dockerfiles, parse

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 180
UV = Path(sys.executable).with_name("uv")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the base image's PATH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_pairs(rest: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', rest))


class ImageRoot:
    """The image's file system under `root`: image path /x/y is root/x/y."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def rewrite(self, command: str) -> str:
        """A build RUN command with the image's absolute paths moved under the root: the image's Python
        becomes this machine's Python 3.11, uv is the pinned uv of the dev venv, and uv keeps its cache."""
        command = command.replace("/usr/local/bin/python3.11", sys._base_executable)
        command = re.sub(r"(?<![\w./-])/(tmp|opt)/", lambda m: f"{self.root}/{m.group(1)}/", command)
        command = re.sub(r"(?<![\w/-])uv ", f"{UV} ", command)
        return command.replace(" --no-cache", "")


def lay_out(image: str, root: Path) -> tuple[ImageRoot, dict[str, str], list[str], Path]:
    """Run the build stage and copy the runtime stage's files: (root, ENV, argv, WORKDIR)."""
    args, stages = parse(dockerfiles()[image])
    fs = ImageRoot(root)
    fs.path("/tmp").mkdir(parents=True)
    build, runtime = stages[0], stages[-1]
    for instr, rest in build.instructions:
        if instr == "COPY":
            src, dest = rest.split()
            fs.path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / src, fs.path(dest))
        elif instr == "RUN" and (m := re.fullmatch(r"python -m pip install uv==([\d.]+)", rest)):
            version = subprocess.run([UV, "--version"], capture_output=True, text=True, check=True).stdout
            assert version.split()[1] == m.group(1), (
                f"{image} pins uv {m.group(1)}, the dev venv has {version}"
            )
        elif instr == "RUN":
            done = subprocess.run(
                ["bash", "-c", fs.rewrite(rest)], capture_output=True, text=True, timeout=900
            )
            assert done.returncode == 0, f"{image}: RUN {rest}\n{done.stderr[-3000:]}"
    patterns = _dockerignore()
    env: dict[str, str] = {}
    workdir = Path("/")
    argv: list[str] = []
    for instr, rest in runtime.instructions:
        if instr == "COPY" and "--from=" not in rest:
            src, dest = rest.split()
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.db")
            shutil.copytree(ROOT / src, fs.path(dest), ignore=ignore)
            assert not _ignored(src, patterns)
        elif instr == "WORKDIR":
            workdir = Path(rest)
        elif instr == "ENV":
            env.update({k: v.strip('"') for k, v in _env_pairs(rest).items()})
        elif instr in ("ENTRYPOINT", "CMD"):
            argv += _json_list(rest)
    for key, value in env.items():  # image paths in the environment (PATH, HOME, the model repository)
        value = value.replace("$PATH", SYSTEM_PATH)
        env[key] = ":".join(
            str(fs.path(v)) if v.startswith("/") and v not in SYSTEM_PATH else v for v in value.split(":")
        )
    fs.path("/tmp").chmod(0o1777)
    return fs, env, argv, fs.path(str(workdir))


def wait_for(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text('utf-8', 'replace')[-4000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError(
        f"{url} not healthy in {START_TIMEOUT_S}s:\n{log.read_text('utf-8', 'replace')[-4000:]}"
    )


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module", params=["gateway", "worker-cpu"])
def running_image(request, tmp_path_factory):
    image = request.param
    root = tmp_path_factory.mktemp(f"image-{image}")
    fs, env, argv, workdir = lay_out(image, root)
    venv_python = fs.path("/opt/kefu/venv/bin/python")
    assert venv_python.exists() and argv[0] == "python"
    prefix = "KEFU_GATEWAY" if image == "gateway" else "KEFU_WORKER"
    port, internal = free_port(), free_port()
    env |= {
        f"{prefix}_HOST": "127.0.0.1",
        f"{prefix}_PORT": str(port),
        f"{prefix}_INTERNAL_PORT": str(internal),
    }
    if image == "worker-cpu":
        Path(env["KEFU_WORKER_REPOSITORY"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(
            ROOT / "models" / "shipped", env["KEFU_WORKER_REPOSITORY"], ignore=lambda *_: ["README.md"]
        )
        env["KEFU_WORKER_MODELS"] = "intent"  # one model per pool, as the chart runs it
    log = root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield image, fs, port, internal, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_image_venv_holds_its_lock_and_no_training_code(running_image):
    image, fs, *_ = running_image
    listing = subprocess.run(
        [str(UV), "pip", "list", "--format", "json", "-p", str(fs.path("/opt/kefu/venv/bin/python"))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    installed = {p["name"].lower(): p["version"] for p in json.loads(listing)}
    lock = dict(
        line.split("==")
        for line in (ROOT / "requirements" / "serving.lock").read_text("utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    )
    expected = {k.lower(): v.split()[0] for k, v in lock.items()}
    if image == "gateway":
        expected.pop("paddlepaddle")
    assert installed == expected
    assert sorted(p.name for p in fs.path("/app").iterdir()) == ["services"]
    probe = "import importlib.util as u, services; print(services.__file__, u.find_spec('models'), u.find_spec('export'))"
    env = {"PATH": f"{fs.path('/opt/kefu/venv/bin')}:{SYSTEM_PATH}"}
    out = subprocess.run(
        ["python", "-c", probe], cwd=fs.path("/app"), env=env, capture_output=True, text=True
    )
    assert out.stdout.split() == [str(fs.path("/app/services/__init__.py")), "None", "None"], out.stderr


def test_the_image_command_starts_and_answers(running_image):
    image, fs, port, internal, proc, log = running_image
    if image == "gateway":
        wait_for(f"http://127.0.0.1:{port}/healthz", proc, log)
        assert get(f"http://127.0.0.1:{internal}/healthz")[0] == 200
        status, body = get(f"http://127.0.0.1:{internal}/metrics")
        assert status == 200 and b"kefu_gateway_" in body
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 404  # nothing internal on the public port
        return
    wait_for(f"http://127.0.0.1:{port}/v2/health/ready", proc, log)
    body = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["我的快递到哪了"]}]}
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/intent/infer", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        answer = json.loads(r.read())
    out = {o["name"]: o for o in answer["outputs"]}
    labels = (
        (fs.path("/models/intent") / answer["model_version"] / "labels.txt").read_text("utf-8").splitlines()
    )
    assert out["label"]["data"][0] in labels and len(out["probs"]["data"]) == len(labels)
    status, metrics = get(f"http://127.0.0.1:{internal}/metrics")
    assert status == 200 and re.search(rb'kefu_worker_request_success_total\{[^}]*model="intent"', metrics)
