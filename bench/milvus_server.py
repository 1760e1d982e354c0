"""A real Milvus 2.3 standalone server (PyPI `milvus==2.3.5`, a dev dependency) kept on loopback, for the FAQ
benchmark (`bench/faq_bench.py`) and its integration test (`tests/test_faq_milvus_server.py`).

Milvus' gRPC and HTTP servers listen on every interface (`net.Listen("tcp", ":port")`) whatever its `*.ip`
settings say. So the process that starts it first moves into a private network namespace that holds only `lo`
(`enter_private_netns`): the server's ports exist on that namespace's loopback alone, nothing outside this
process tree can reach them, and the server reaches nothing outside. The client (benchmark or test child) runs
in the same process, so it talks to `127.0.0.1`. Root uses CLONE_NEWNET; other users a user namespace too.

The `milvus` package ships the server as an lzma-compressed binary, unpacked (about 120 MB) into the base
directory on every start; give it a temporary directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
COMPONENTS = (
    "rootCoord",
    "proxy",
    "queryCoord",
    "queryNode",
    "indexCoord",
    "indexNode",
    "dataCoord",
    "dataNode",
)


class MilvusServerUnavailable(RuntimeError):
    """The server could not be started (package missing, no private network namespace, start-up failure)."""


def enter_private_netns() -> None:
    """Moves this process into a new network namespace with only `lo`, up. Call it before any thread starts
    (a namespace change is per thread; threads created afterwards inherit it). Raises `OSError` with the reason."""
    if threading.active_count() > 1:
        raise OSError("enter_private_netns must run before any other thread starts")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:  # unprivileged: a user namespace first
            raise OSError(err, f"cannot create a private network namespace: {os.strerror(err)}")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def interfaces() -> list[str]:
    """Network interfaces of this process's namespace (only `lo` inside the private one). From /proc/self/net:
    /sys/class/net shows the namespace sysfs was mounted in."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


class MilvusServer23:
    """`with MilvusServer23() as uri:` a fresh Milvus 2.3 standalone in a temporary directory, on 127.0.0.1.

    Call `enter_private_netns()` first (the constructor refuses to start outside one unless `allow_shared_net`)."""

    def __init__(self, base_dir: str | Path | None = None, allow_shared_net: bool = False):
        self._tmp = None if base_dir else tempfile.TemporaryDirectory(prefix="milvus-2.3-")
        self.base_dir = Path(base_dir or self._tmp.name)
        self.allow_shared_net = allow_shared_net
        self.server = None
        self.uri: str | None = None
        self.version: str | None = None

    def start(self, timeout_s: float = 90.0) -> str:
        if not self.allow_shared_net and interfaces() not in ([], ["lo"]):
            raise MilvusServerUnavailable(
                f"not in a private network namespace (interfaces {interfaces()}): Milvus would listen on all "
                "of them; call enter_private_netns() first"
            )
        try:
            import milvus
        except ImportError as e:
            raise MilvusServerUnavailable(
                "the `milvus` package is not installed (pip install milvus==2.3.5)"
            ) from e
        self.version = milvus.__version__
        config = milvus.MilvusServerConfig()
        server = milvus.MilvusServer(config, wait_for_started=False)
        server.set_base_dir(str(self.base_dir))
        for component in COMPONENTS:  # what each component registers for the others to call
            config.set(f"{component}.ip", "127.0.0.1")
        started = time.monotonic()
        try:
            server.start()  # resolves free ports on 127.0.0.1, unpacks the binary, spawns `milvus run standalone`
        except Exception as e:
            raise MilvusServerUnavailable(
                f"milvus {self.version} did not start: {e}{self._log_tail()}"
            ) from e
        self.server = server
        health = f"http://127.0.0.1:{server.webservice_port}/healthz"
        while True:
            if server.server_proc is None or server.server_proc.poll() is not None:
                code = None if server.server_proc is None else server.server_proc.returncode
                self.stop()
                raise MilvusServerUnavailable(f"milvus {self.version} exited ({code}){self._log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if b"OK" in resp.read():
                        break
            if time.monotonic() - started > timeout_s:
                self.stop()
                raise MilvusServerUnavailable(
                    f"milvus {self.version} not healthy within {timeout_s:.0f} s{self._log_tail()}"
                )
            time.sleep(0.5)
        self.uri = f"http://127.0.0.1:{server.listen_port}"
        return self.uri

    def stop(self) -> None:
        if self.server is not None:
            proc = self.server.server_proc
            try:
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(20)  # a clean stop flushes; the package's own stop() waits 1 s only
                    except Exception:
                        proc.kill()
                        proc.wait(10)
                self.server.stop()
            finally:
                self.server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _log_tail(self, chars: int = 1500) -> str:
        tails = []
        for name in ("milvus-stderr.log", "milvus-stdout.log"):
            path = self.base_dir / "logs" / name
            if path.exists():
                text = path.read_text("utf-8", "replace").strip()
                if text:
                    tails.append(f"{name}: …{text[-chars:]}")
        return ("\n" + "\n".join(tails)) if tails else ""

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def listening_addresses(pid: int) -> list[str]:
    """TCP addresses the process `pid` listens on, from /proc/net/tcp{,6} of its namespace (for checks)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                addr, port = cols[1].split(":")
                raw = bytes.fromhex(addr)
                if width == 8:
                    host = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:
                    host = socket.inet_ntop(
                        socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    )
                out.append(f"{host}:{int(port, 16)}")
    return sorted(out)
