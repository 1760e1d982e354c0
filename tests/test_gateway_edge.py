"""Gateway edge over HTTP: authentication (API keys, JWT), scopes, per-key rate limits (memory and Redis shared
by two gateways), body / text / list limits, the uniform error body, and the FAQ admin router behind it."""

import asyncio
import time
from pathlib import Path
from typing import Annotated

import httpx
import jwt
import pytest
import yaml
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from services.gateway.core.errors import InvalidInput
from services.gateway.edge.guard import Edge, EdgeSettings
from services.gateway.edge.ratelimit import MemoryRateLimiter
from services.gateway.edge.security import DEMO_KEY, Principal, sha256_hex
from services.gateway.metrics import GatewayMetrics
from tests.redis_fixture import redis_client, redis_url  # noqa: F401

pytestmark = pytest.mark.asyncio

CHAT_KEY, ADMIN_KEY, BOTH_KEY, SLOW_KEY = "chat-key-1", "admin-key-1", "both-key-1", "slow-key-1"
SECRET = "x" * 40


def write_keys(tmp_path: Path) -> Path:
    keys = [
        {"tenant": "acme", "sha256": sha256_hex(CHAT_KEY), "scopes": ["chat"]},
        {"tenant": "ops", "sha256": sha256_hex(ADMIN_KEY), "scopes": ["admin"]},
        {"tenant": "acme", "sha256": sha256_hex(BOTH_KEY), "scopes": ["chat", "admin"]},
        {
            "tenant": "slow",
            "sha256": sha256_hex(SLOW_KEY),
            "scopes": ["chat"],
            "rate_per_s": 0.01,
            "burst": 3,
        },
    ]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def make_edge(tmp_path: Path, redis=None, **overrides) -> Edge:
    settings = EdgeSettings(api_keys_file=write_keys(tmp_path), **overrides)
    return Edge(settings, GatewayMetrics(CollectorRegistry()), redis=redis)


class Texts(BaseModel):
    texts: list[str]


def make_app(edge: Edge) -> FastAPI:
    app = FastAPI()
    edge.install(app)

    @app.post("/v1/texts")
    async def texts(body: Texts, principal: Annotated[Principal, Depends(edge.require("chat"))]):
        return {"texts": edge.check_texts(body.texts), "tenant": principal.tenant, "key": principal.key_id}

    @app.get("/v1/admin-only")
    async def admin_only(principal: Annotated[Principal, Depends(edge.require("admin"))]):
        return {"tenant": principal.tenant}

    @app.get("/v1/boom")
    async def boom():
        raise RuntimeError("internal detail that must not leak")

    return app


def client(app: FastAPI, **kw) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw", **kw)


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["request_id"] == r.headers["x-request-id"]
    assert set(err) == {"code", "message", "request_id"}
    return err


async def test_api_key_and_bearer_key_accepted(tmp_path):
    async with client(make_app(make_edge(tmp_path))) as c:
        r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"X-API-Key": CHAT_KEY})
        assert r.status_code == 200 and r.json()["tenant"] == "acme"
        assert r.json()["key"] == sha256_hex(CHAT_KEY)[:12]
        r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"Authorization": f"Bearer {CHAT_KEY}"})
        assert r.status_code == 200


async def test_missing_and_invalid_key_401_wrong_scope_403(tmp_path):
    async with client(make_app(make_edge(tmp_path))) as c:
        r = await c.post("/v1/texts", json={"texts": ["hi"]})
        assert "missing credentials" in assert_error(r, 401, "unauthorized")["message"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"X-API-Key": "nope"})
        assert assert_error(r, 401, "unauthorized")["message"] == "invalid API key"
        r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"Authorization": f"Basic {CHAT_KEY}"})
        assert "Bearer" in assert_error(r, 401, "unauthorized")["message"]
        r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"X-API-Key": ADMIN_KEY})
        assert "chat scope" in assert_error(r, 403, "forbidden")["message"]
        r = await c.get("/v1/admin-only", headers={"X-API-Key": CHAT_KEY})
        assert_error(r, 403, "forbidden")
        r = await c.get("/v1/admin-only", headers={"X-API-Key": BOTH_KEY})
        assert r.status_code == 200


async def test_demo_key_works_in_development(tmp_path):
    edge = Edge(EdgeSettings(), GatewayMetrics(CollectorRegistry()))
    async with client(make_app(edge)) as c:
        r = await c.get("/v1/admin-only", headers={"X-API-Key": DEMO_KEY})
        assert r.status_code == 200 and r.json() == {"tenant": "demo"}


def token(claims: dict, key: str = SECRET, alg: str = "HS256") -> str:
    now = int(time.time())
    return jwt.encode({"sub": "user-7", "tenant": "jwt-co", "iat": now, "exp": now + 60, **claims}, key, alg)


async def test_jwt_valid_expired_bad_signature_scope(tmp_path):
    app = make_app(
        make_edge(
            tmp_path, jwt_secret=SECRET, jwt_issuer="kefu-idp", jwt_audience="kefu", jwt_tenants="jwt-co,t"
        )
    )
    good = {"iss": "kefu-idp", "aud": "kefu", "scope": "chat"}
    async with client(app) as c:
        r = await c.post(
            "/v1/texts", json={"texts": ["hi"]}, headers={"Authorization": f"Bearer {token(good)}"}
        )
        assert r.status_code == 200 and r.json()["tenant"] == "jwt-co" and r.json()["key"] == "jwt:user-7"
        cases = {
            "expired": token({**good, "exp": int(time.time()) - 120}),
            "bad signature": token(good, key="y" * 40),
            "wrong audience": token({**good, "aud": "other"}),
            "wrong issuer": token({**good, "iss": "evil"}),
            "missing claim 'exp'": jwt.encode(
                {k: v for k, v in good.items()} | {"tenant": "t"}, SECRET, "HS256"
            ),
            "tenant id": token({**good, "tenant": "bad tenant!"}),
        }
        for reason, tok in cases.items():
            r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"Authorization": f"Bearer {tok}"})
            assert reason in assert_error(r, 401, "unauthorized")["message"], reason
        r = await c.get("/v1/admin-only", headers={"Authorization": f"Bearer {token(good)}"})
        assert_error(r, 403, "forbidden")
        both = token({**good, "scope": "chat admin"})
        r = await c.get("/v1/admin-only", headers={"Authorization": f"Bearer {both}"})
        assert r.status_code == 200


async def test_jwt_ignored_when_not_configured(tmp_path):
    async with client(make_app(make_edge(tmp_path))) as c:
        tok = token({"scope": "chat"})
        r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"Authorization": f"Bearer {tok}"})
        assert assert_error(r, 401, "unauthorized")["message"] == "invalid API key"


async def test_jwt_rs256(tmp_path):
    from cryptography.hazmat.primitives import serialization  # pinned in serving (PyJWT's RS256)
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    app = make_app(make_edge(tmp_path, jwt_public_key_file=tmp_path / "pub.pem", jwt_tenants=["jwt-co"]))
    async with client(app) as c:
        tok = token({"scope": "chat"}, key=private, alg="RS256")
        r = await c.post("/v1/texts", json={"texts": ["hi"]}, headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 200


async def test_rate_limit_burst_429_retry_after_refill_and_isolation(tmp_path):
    edge = make_edge(tmp_path)
    now = [1000.0]
    edge.limiter = MemoryRateLimiter(clock=lambda: now[0])
    async with client(make_app(edge)) as c:
        slow = {"X-API-Key": SLOW_KEY}
        for _ in range(3):  # burst 3
            assert (await c.post("/v1/texts", json={"texts": ["a"]}, headers=slow)).status_code == 200
        r = await c.post("/v1/texts", json={"texts": ["a"]}, headers=slow)
        assert_error(r, 429, "rate_limited")
        assert r.headers["retry-after"] == "100"  # one token at 0.01/s
        other = await c.post("/v1/texts", json={"texts": ["a"]}, headers={"X-API-Key": CHAT_KEY})
        assert other.status_code == 200  # another key has its own bucket
        now[0] += 99.5
        r = await c.post("/v1/texts", json={"texts": ["a"]}, headers=slow)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"  # 0.5 s, rounded up to whole seconds
        now[0] += 1.0
        assert (await c.post("/v1/texts", json={"texts": ["a"]}, headers=slow)).status_code == 200
    refused = [s.value for s in edge.metrics.rate_limited.collect()[0].samples if s.name.endswith("_total")]
    assert refused == [2.0]  # both 429s counted, under tenant "slow"
    assert edge.metrics.rate_limited.collect()[0].samples[0].labels == {"tenant": "slow"}


@pytest.mark.slow
async def test_redis_rate_limit_shared_by_two_gateways(tmp_path, redis_client):  # noqa: F811
    a, b = (
        make_app(make_edge(tmp_path, redis=redis_client)),
        make_app(make_edge(tmp_path, redis=redis_client)),
    )
    slow = {"X-API-Key": SLOW_KEY}
    async with client(a) as ca, client(b) as cb:
        codes = [
            (await c.post("/v1/texts", json={"texts": ["a"]}, headers=slow)).status_code for c in (ca, cb, ca)
        ]
        assert codes == [200, 200, 200]
        r = await cb.post("/v1/texts", json={"texts": ["a"]}, headers=slow)
        assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 100
        assert (
            await ca.post("/v1/texts", json={"texts": ["a"]}, headers={"X-API-Key": CHAT_KEY})
        ).status_code == 200


@pytest.mark.slow
async def test_redis_rate_limit_refills(tmp_path, redis_client):  # noqa: F811
    from services.gateway.edge.ratelimit import RedisRateLimiter

    limiter = RedisRateLimiter(redis_client)
    assert (await limiter.acquire("k", 10.0, 1)).allowed
    refused = await limiter.acquire("k", 10.0, 1)
    assert not refused.allowed and 0 < refused.retry_after_s <= 0.1 and refused.retry_after_header == "1"
    await asyncio.sleep(0.15)
    assert (await limiter.acquire("k", 10.0, 1)).allowed
    assert 0 < await redis_client.pttl("kefu:ratelimit:k") <= 1100  # idle buckets expire


async def test_redis_down_falls_back_to_local_buckets(tmp_path):
    from services.gateway.state.redis_conn import connect

    dead = connect("redis://127.0.0.1:1/0", timeout_s=0.2, connect_timeout_s=0.2)
    edge = make_edge(tmp_path, redis=dead)
    async with client(make_app(edge)) as c:
        slow = {"X-API-Key": SLOW_KEY}
        codes = [
            (await c.post("/v1/texts", json={"texts": ["a"]}, headers=slow)).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
    await dead.aclose()


async def test_body_limits_413(tmp_path):
    async with client(make_app(make_edge(tmp_path, max_body_bytes=2048))) as c:
        big = {"texts": ["a" * 4000]}
        r = await c.post("/v1/texts", json=big, headers={"X-API-Key": CHAT_KEY})
        assert "over the limit of 2048" in assert_error(r, 413, "body_too_large")["message"]

        async def chunks():  # no Content-Length: refused while streaming
            for _ in range(10):
                yield b'{"texts": ["' + b"a" * 500

        r = await c.post("/v1/texts", content=chunks(), headers={"X-API-Key": CHAT_KEY})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "body_too_large")


async def test_text_and_list_limits_400_naming_the_index(tmp_path):
    app = make_app(make_edge(tmp_path, max_text_chars=10, max_list_size=3))
    h = {"X-API-Key": CHAT_KEY}
    async with client(app) as c:
        r = await c.post("/v1/texts", json={"texts": ["ok", "a" * 11]}, headers=h)
        assert "texts[1]: 11 characters, at most 10" in assert_error(r, 400, "text_too_long")["message"]
        r = await c.post("/v1/texts", json={"texts": ["a", "b", "c", "d"]}, headers=h)
        assert "4 texts, at most 3" in assert_error(r, 400, "too_many_texts")["message"]
        r = await c.post("/v1/texts", json={"texts": ["a", " \u3000\t "]}, headers=h)
        assert "texts[1]" in assert_error(r, 400, "empty_text")["message"]
        r = await c.post("/v1/texts", json={"texts": []}, headers=h)
        assert_error(r, 400, "no_texts")
        r = await c.post("/v1/texts", json={"texts": ["  ａｂｃ　　ｄ  ", "ＦＵＣＫ you"]}, headers=h)
        assert r.json()["texts"] == ["abc d", "**** you"]  # 10 chars counted after normalisation


async def test_validation_and_http_errors_have_the_uniform_body(tmp_path):
    async with client(make_app(make_edge(tmp_path))) as c:
        h = {"X-API-Key": CHAT_KEY}
        r = await c.post("/v1/texts", json={"text": "hi"}, headers=h)
        assert "texts: Field required" in assert_error(r, 400, "invalid_request")["message"]
        r = await c.post("/v1/texts", json={"texts": ["a", 3]}, headers=h)
        assert "texts.1" in assert_error(r, 400, "invalid_request")["message"]
        r = await c.post("/v1/texts", content=b"{not json", headers={**h, "Content-Type": "application/json"})
        assert "not JSON" in assert_error(r, 400, "invalid_request")["message"]
        assert_error(await c.get("/nowhere"), 404, "not_found")
        assert_error(await c.delete("/v1/texts"), 405, "method_not_allowed")
        r = await c.get("/v1/boom")
        err = assert_error(r, 500, "internal")
        assert "must not leak" not in r.text and "see the server log" in err["message"]


async def test_request_id_echoed_or_generated(tmp_path):
    async with client(make_app(make_edge(tmp_path))) as c:
        r = await c.post("/v1/texts", json={"texts": ["a"]}, headers={"X-Request-ID": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123" and r.json()["error"]["request_id"] == "abc-123"
        r = await c.post("/v1/texts", json={"texts": ["a"]}, headers={"X-Request-ID": "bad id\twith space"})
        rid = r.headers["x-request-id"]
        assert len(rid) == 36 and r.json()["error"]["request_id"] == rid


def test_check_text_names_its_field(tmp_path):
    edge = make_edge(tmp_path, max_text_chars=5)
    assert edge.check_text(" ＨＩ ") == "HI"
    with pytest.raises(InvalidInput) as e:
        edge.check_text("abcdefg")
    assert isinstance(e.value, InvalidInput) and e.value.message.startswith("text: 7 characters")


async def test_faq_admin_router_behind_the_edge(tmp_path):
    from services.faq.admin import create_admin_router
    from services.faq.store import InMemoryFaqStore
    from services.faq.testing import HashingEmbedder

    edge = make_edge(tmp_path)
    app = make_app(edge)
    emb = HashingEmbedder(dim=32)
    app.include_router(
        create_admin_router(InMemoryFaqStore(32), emb, edge.admin_dependency()), prefix="/admin/faq"
    )
    async with client(app) as c:
        r = await c.get("/admin/faq/faqs")
        assert_error(r, 401, "unauthorized")
        r_chat = await c.get("/admin/faq/faqs", headers={"X-Request-ID": "rid-1", "X-API-Key": CHAT_KEY})
        assert "admin scope" in assert_error(r_chat, 403, "forbidden")["message"]
        assert r_chat.headers["x-request-id"] == "rid-1"
        r = await c.get("/admin/faq/faqs", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200 and r.json()["total"] == 0
        # the admin router's own limit (256 KiB) applies there, not the gateway's 64 KiB
        faq = {"faq_id": "f1", "question": "怎么退货", "answer": "x" * 70_000}
        r = await c.post("/admin/faq/faqs", json=faq, headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code in (201, 400), r.text  # reached the router (answer length is its rule)
        assert r.json().get("error", {}).get("code") != "body_too_large"
        # same uniform 401 body as the gateway's own routes
        mine = (await c.get("/v1/admin-only")).json()["error"]
        theirs = (await c.get("/admin/faq/faqs")).json()["error"]
        assert set(mine) == set(theirs) and mine["code"] == theirs["code"] == "unauthorized"


async def test_faq_admin_router_rate_limited(tmp_path):
    from services.faq.admin import create_admin_router
    from services.faq.store import InMemoryFaqStore
    from services.faq.testing import HashingEmbedder

    edge = make_edge(tmp_path, default_burst=2, default_rate_per_s=0.01)
    app = make_app(edge)
    app.include_router(
        create_admin_router(InMemoryFaqStore(32), HashingEmbedder(dim=32), edge.admin_dependency()),
        prefix="/admin/faq",
    )
    async with client(app) as c:
        codes = [
            (await c.get("/admin/faq/faqs", headers={"X-API-Key": ADMIN_KEY})).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        r = await c.get("/admin/faq/faqs", headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 429 and r.headers["retry-after"] == "100"
        assert "rate limit" in r.json()["error"]["message"]
