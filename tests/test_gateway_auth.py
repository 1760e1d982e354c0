"""Gateway authentication hardening (issue 11 items 7, 10, 11): production secrets (entropy rule, never echoed),
authentication before the body is read, the failed-auth throttle per client address (memory and Redis, trusted
proxies), and JWT hygiene (exp + iat required, lifetime cap, configured tenants, printable-ASCII keys)."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import jwt
import pytest
import yaml
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from services.gateway.edge.guard import Edge, EdgeSettings
from services.gateway.edge.security import Principal, sha256_hex
from services.gateway.metrics import GatewayMetrics
from tests import gateway_app
from tests.redis_fixture import redis_client, redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CHAT_KEY, ADMIN_KEY = "chat-key-Zr81", "admin-key-Zr81"
SECRET = "Hq3vN8xL2pW7tK5mR9cJ4yF6bD1gS0aZ"  # 32 random characters


def write_keys(tmp_path: Path) -> Path:
    keys = [
        {
            "tenant": "acme",
            "sha256": sha256_hex(CHAT_KEY),
            "scopes": ["chat"],
            "rate_per_s": 1000,
            "burst": 1000,
        },
        {
            "tenant": "ops",
            "sha256": sha256_hex(ADMIN_KEY),
            "scopes": ["admin"],
            "rate_per_s": 1000,
            "burst": 1000,
        },
    ]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def make_edge(tmp_path: Path, redis=None, **overrides) -> Edge:
    return Edge(
        EdgeSettings(api_keys_file=write_keys(tmp_path), **overrides),
        GatewayMetrics(CollectorRegistry()),
        redis,
    )


class Texts(BaseModel):
    texts: list[str]


def edge_app(edge: Edge) -> FastAPI:
    app = FastAPI()
    edge.install(app)

    @app.post("/v1/texts")
    async def texts(body: Texts, principal: Annotated[Principal, Depends(edge.require("chat"))]):
        return {"tenant": principal.tenant, "n": len(body.texts)}

    return app


def client(app: FastAPI, address: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


def code_of(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else ""


# ── item 7: secrets ─────────────────────────────────────────────────────────────────────────────────


def own_keys(tmp_path: Path) -> Path:
    path = tmp_path / "own.yaml"
    path.write_text(
        yaml.safe_dump({"keys": [{"tenant": "acme", "sha256": sha256_hex("k" * 40), "scopes": ["chat"]}]})
    )
    return path


@pytest.mark.parametrize(
    "weak",
    ["a" * 32, "kefu" * 8, "Tianmao2024!" * 3, "ab1" * 16],
    ids=["one-char", "word", "word-with-digits", "short-unit"],
)
def test_production_refuses_low_entropy_jwt_secrets(tmp_path, weak):
    assert len(weak) >= 32
    with pytest.raises(ValidationError, match="KEFU_GATEWAY_JWT_SECRET: too little entropy") as e:
        EdgeSettings(mode="production", api_keys_file=own_keys(tmp_path), jwt_secret=weak)
    assert weak[-8:] not in str(e.value)  # the message never quotes the secret (nor its tail)


def test_production_accepts_a_random_secret(tmp_path):
    for _ in range(20):
        s = EdgeSettings(
            mode="production", api_keys_file=own_keys(tmp_path), jwt_secret=secrets.token_urlsafe(32)
        )
        assert s.jwt_on


def test_refused_settings_echo_no_part_of_the_secret(tmp_path):
    short = "Pq7Wz3Lm9Xc2Vb8Nk4Rt6Y"  # 22 random characters: refused as too short
    with pytest.raises(ValidationError) as e:
        EdgeSettings(mode="production", api_keys_file=own_keys(tmp_path), jwt_secret=short)
    text = str(e.value) + repr(e.value)  # what a start-up failure prints
    assert "22 bytes is too short" in text
    assert not any(short[i : i + 6] in text for i in range(len(short) - 5)), text


def test_settings_hold_secrets_as_secrets(tmp_path):
    s = EdgeSettings(jwt_secret=SECRET, redis_url="redis://:Hunter2-redis-pass@10.0.0.9:6379/0")
    shown = repr(s) + str(s) + s.model_dump_json()
    assert SECRET not in shown and "Hunter2-redis-pass" not in shown
    assert s.jwt_secret.get_secret_value() == SECRET


def test_the_faq_store_token_is_a_secret_too():
    from services.faq.settings import FaqSettings

    s = FaqSettings(token="root:Milvus-Hunter2-pass")
    shown = repr(s) + str(s) + s.model_dump_json()
    assert "Hunter2" not in shown
    assert s.token.get_secret_value() == "root:Milvus-Hunter2-pass"


def test_refused_start_prints_no_part_of_the_secret(tmp_path):
    short = "Xe5Tq9Jm2Vr7Lc4Wz8Hn3B"  # refused (too short): the start fails with exit status 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env |= {
        "KEFU_GATEWAY_MODE": "production",
        "KEFU_GATEWAY_API_KEYS_FILE": str(own_keys(tmp_path)),
        "KEFU_GATEWAY_JWT_SECRET": short,
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        [sys.executable, "-m", "services.gateway", "--port", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "KEFU_GATEWAY_JWT_SECRET" in out
    assert not any(short[i : i + 6] in out for i in range(len(short) - 5)), out


# ── item 10: order of checks ────────────────────────────────────────────────────────────────────────


@pytest.mark.asyncio
async def test_authentication_runs_before_the_body_is_parsed(tmp_path):
    app, _, _ = gateway_app.build(tmp_path)
    broken = {"Content-Type": "application/json"}
    async with client(app) as c:
        for path in ("/v1/chat", "/v1/intent", "/admin/faq/faqs"):
            r = await c.post(path, content=b"{not json", headers=broken)
            assert code_of(r) == (401, "unauthorized"), (path, r.text)
            r = await c.post(path, content=b"{not json", headers={**broken, "X-API-Key": "wrong-key"})
            assert code_of(r) == (401, "unauthorized"), (path, r.text)
        r = await c.post("/v1/chat", json={"session_id": 7}, headers={"X-API-Key": gateway_app.DEMO_KEY})
        assert code_of(r) == (400, "invalid_request")  # authenticated: now the body is looked at
        r = await c.post(
            "/admin/faq/faqs", content=b"{not json", headers=gateway_app.headers("chat-only-key-0001")
        )
        assert code_of(r) == (403, "forbidden")  # the scope is checked before the body too


@pytest.mark.asyncio
async def test_unauthenticated_streamed_body_is_refused_unread(tmp_path):
    app, _, _ = gateway_app.build(tmp_path)
    chunks_read = 0

    async def body():
        nonlocal chunks_read
        for _ in range(50):  # 50 x 4 KiB, streamed without Content-Length: over the 4 KiB test limit
            chunks_read += 1
            yield b"x" * 4096

    async with client(app) as c:
        r = await c.post("/v1/chat", content=body(), headers={"Content-Type": "application/json"})
        assert code_of(r) == (401, "unauthorized")
        assert chunks_read == 0  # refused before the first chunk was asked for
        # a declared size over the limit is refused first, without reading (documented order)
        r = await c.post("/v1/chat", content=b"x" * 5000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413


# ── item 10: failed-auth throttle ───────────────────────────────────────────────────────────────────


@pytest.mark.asyncio
async def test_brute_force_is_throttled_per_address_without_locking_out_the_tenant(tmp_path):
    app = edge_app(make_edge(tmp_path, auth_fail_burst=10, auth_fail_rate_per_s=0.1))
    body = {"texts": ["hi"]}
    async with client(app, "198.51.100.1") as attacker, client(app, "198.51.100.2") as other:
        codes = [
            code_of(await attacker.post("/v1/texts", json=body, headers={"X-API-Key": f"guess-{i}"}))
            for i in range(40)
        ]
        assert codes[:10] == [(401, "unauthorized")] * 10
        assert codes[10:] == [(429, "auth_throttled")] * 30
        r = await attacker.post("/v1/texts", json=body, headers={"X-API-Key": CHAT_KEY})
        assert code_of(r) == (429, "auth_throttled")  # blocked: even the right key, so a hit is not visible
        assert 1 <= int(r.headers["retry-after"]) <= 10
        r = await other.post("/v1/texts", json=body, headers={"X-API-Key": CHAT_KEY})
        assert r.status_code == 200 and r.json()["tenant"] == "acme"  # same tenant, other address: fine
        r = await other.post("/v1/texts", json=body)  # missing credentials are not guesses
        assert code_of(r) == (401, "unauthorized")


@pytest.mark.asyncio
async def test_throttle_covers_the_faq_admin_routes(tmp_path):
    app, _, _ = gateway_app.build(tmp_path)
    async with client(app, "198.51.100.9") as c:
        codes = [
            (await c.get("/admin/faq/faqs", headers={"Authorization": f"Bearer nope-{i}"})).status_code
            for i in range(15)
        ]
        assert codes == [401] * 10 + [429] * 5


@pytest.mark.asyncio
async def test_x_forwarded_for_only_from_trusted_proxies(tmp_path):
    body = {"texts": ["hi"]}
    untrusted = edge_app(make_edge(tmp_path, auth_fail_burst=3))
    async with client(untrusted, "198.51.100.20") as c:
        for i in range(4):  # a forged X-Forwarded-For per attempt does not give fresh allowances
            r = await c.post(
                "/v1/texts", json=body, headers={"X-API-Key": "bad", "X-Forwarded-For": f"192.0.2.{i}"}
            )
        assert code_of(r) == (429, "auth_throttled")

    behind = edge_app(make_edge(tmp_path, auth_fail_burst=3, trusted_proxies="10.0.0.0/8"))
    async with client(behind, "10.1.2.3") as proxy:
        for _ in range(4):  # the client prepends a fake hop: the proxy's right-most entry counts
            r = await proxy.post(
                "/v1/texts",
                json=body,
                headers={"X-API-Key": "bad", "X-Forwarded-For": "192.0.2.99, 192.0.2.50"},
            )
        assert code_of(r) == (429, "auth_throttled")
        ok = await proxy.post(
            "/v1/texts", json=body, headers={"X-API-Key": CHAT_KEY, "X-Forwarded-For": "192.0.2.51"}
        )
        assert ok.status_code == 200  # another client behind the same proxy


@pytest.mark.asyncio
async def test_blocked_address_recovers_when_a_token_is_back():
    from services.gateway.edge.auth_throttle import FailedAuthThrottle, client_address, parse_networks

    now = [1000.0]
    throttle = FailedAuthThrottle(0.5, 2, clock=lambda: now[0])
    assert [await throttle.failed("192.0.2.1") for _ in range(2)] == [0.0, 0.0]
    assert await throttle.failed("192.0.2.1") == pytest.approx(2.0)
    assert await throttle.blocked_for("192.0.2.1") == pytest.approx(2.0)
    assert await throttle.blocked_for("192.0.2.2") == 0.0
    # IPv6: one /64 is one client
    for _ in range(3):
        await throttle.failed("2001:db8:1:2::1")
    assert await throttle.blocked_for("2001:db8:1:2:ffff::9") > 0
    assert await throttle.blocked_for("2001:db8:1:3::1") == 0.0
    now[0] += 2.01
    assert await throttle.blocked_for("192.0.2.1") == 0.0
    assert await throttle.failed("192.0.2.1") == 0.0  # one attempt refilled
    proxies = parse_networks(["10.0.0.0/8"])
    assert client_address("10.0.0.1", ["garbage, 192.0.2.5, 10.0.0.2"], proxies) == "192.0.2.5"
    assert client_address("192.0.2.77", ["192.0.2.5"], proxies) == "192.0.2.77"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_redis_throttle_is_shared_by_replicas(tmp_path, redis_client):  # noqa: F811
    a = edge_app(make_edge(tmp_path, redis=redis_client, auth_fail_burst=3))
    b = edge_app(make_edge(tmp_path, redis=redis_client, auth_fail_burst=3))
    body = {"texts": ["hi"]}
    async with (
        client(a, "198.51.100.30") as ca,
        client(b, "198.51.100.30") as cb,
        client(b, "198.51.100.31") as cc,
    ):
        codes = [
            (await c.post("/v1/texts", json=body, headers={"X-API-Key": "bad"})).status_code
            for c in (ca, cb, ca, cb)
        ]
        assert codes == [401, 401, 401, 429]
        r = await ca.post("/v1/texts", json=body, headers={"X-API-Key": CHAT_KEY})
        assert code_of(r) == (429, "auth_throttled") and int(r.headers["retry-after"]) >= 1
        assert (await cc.post("/v1/texts", json=body, headers={"X-API-Key": CHAT_KEY})).status_code == 200


# ── item 11: JWT hygiene, key characters ────────────────────────────────────────────────────────────


def token(**claims) -> str:
    now = int(time.time())
    base = {"sub": "u-1", "tenant": "acme", "scope": "chat", "iat": now, "exp": now + 300}
    return jwt.encode({k: v for k, v in {**base, **claims}.items() if v is not None}, SECRET, "HS256")


@pytest.mark.asyncio
async def test_jwt_requires_exp_and_iat_caps_lifetime_and_checks_the_tenant(tmp_path):
    app = edge_app(make_edge(tmp_path, jwt_secret=SECRET, jwt_max_lifetime_s=600, auth_fail_burst=100))
    now = int(time.time())
    async with client(app) as c:

        async def send(tok: str) -> httpx.Response:
            return await c.post(
                "/v1/texts", json={"texts": ["a"]}, headers={"Authorization": f"Bearer {tok}"}
            )

        r = await send(token())
        assert r.status_code == 200 and r.json()["tenant"] == "acme"
        refused = {
            "missing claim 'iat'": token(iat=None),
            "missing claim 'exp'": token(exp=None),
            "over the limit of 600 s": token(exp=now + 86400 * 365),
            "tenant 'intruder' is not configured": token(tenant="intruder"),
            "not valid yet": token(iat=now + 3600, exp=now + 3900),
        }
        for reason, tok in refused.items():
            r = await send(tok)
            assert r.status_code == 401 and reason in r.json()["error"]["message"], (reason, r.text)


@pytest.mark.asyncio
async def test_jwt_tenants_setting_names_the_accepted_tenants(tmp_path):
    app = edge_app(make_edge(tmp_path, jwt_secret=SECRET, jwt_tenants="shop-a, shop-b"))
    async with client(app) as c:
        for tenant, status in (("shop-b", 200), ("acme", 401)):
            r = await c.post(
                "/v1/texts",
                json={"texts": ["a"]},
                headers={"Authorization": f"Bearer {token(tenant=tenant)}"},
            )
            assert r.status_code == status, (tenant, r.text)


@pytest.mark.asyncio
async def test_keys_with_non_ascii_whitespace_are_refused_not_trimmed(tmp_path):
    app = edge_app(make_edge(tmp_path))
    key = CHAT_KEY.encode()
    async with client(app) as c:
        assert (
            await c.post("/v1/texts", json={"texts": ["a"]}, headers={"X-API-Key": key})
        ).status_code == 200
        for bad in (key + b"\xa0", b"\xa0" + key, key + b"\x85", b"Bearer " + key + b"\xa0"):
            name = "Authorization" if bad.startswith(b"Bearer") else "X-API-Key"
            r = await c.post("/v1/texts", json={"texts": ["a"]}, headers={name: bad})
            assert code_of(r) == (401, "unauthorized"), bad
            assert "printable ASCII" in r.json()["error"]["message"]


@pytest.mark.asyncio
async def test_standalone_faq_admin_router_authenticates_before_the_body():
    from services.faq.admin import create_admin_router, require_admin_key
    from services.faq.store import InMemoryFaqStore
    from services.faq.testing import HashingEmbedder

    app = FastAPI()
    app.include_router(
        create_admin_router(
            InMemoryFaqStore(32), HashingEmbedder(dim=32), require_admin_key({sha256_hex(ADMIN_KEY)})
        ),
        prefix="/admin/faq",
    )
    broken = {"Content-Type": "application/json"}
    async with client(app) as c:
        for auth in ({}, {"Authorization": "Bearer wrong"}):
            r = await c.post("/admin/faq/faqs", content=b"{not json", headers={**broken, **auth})
            assert code_of(r) == (401, "unauthorized"), r.text
        good = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = await c.post("/admin/faq/faqs", content=b"{not json", headers={**broken, **good})
        assert r.status_code == 400  # authenticated: the body's problem is reported
        r = await c.get(
            "/admin/faq/faqs", headers={"Authorization": b"Bearer " + ADMIN_KEY.encode() + b"\xa0"}
        )
        assert code_of(r) == (401, "unauthorized")  # a non-ASCII space is not trimmed into a valid key
        assert (await c.get("/admin/faq/faqs", headers=good)).status_code == 200


def test_the_server_leaves_x_forwarded_for_to_the_edge(monkeypatch):
    """uvicorn would rewrite the client address from X-Forwarded-For of any loopback peer (its default
    --forwarded-allow-ips); the gateway's server must not, so only KEFU_GATEWAY_TRUSTED_PROXIES count."""
    from services.gateway import __main__ as gateway_main
    from services.gateway.api import app as gateway_app_module

    for name in [k for k in os.environ if k.startswith("KEFU_")]:
        monkeypatch.delenv(name)
    seen = {}
    fake_app = FastAPI()
    fake_app.state.internal_app = FastAPI()
    monkeypatch.setattr(gateway_app_module, "create_app_from_config", lambda config: fake_app)
    monkeypatch.setattr(gateway_main, "run_servers", lambda specs, **config: seen.update(config) or 0)
    assert gateway_main.main([]) == 0
    assert seen["proxy_headers"] is False
