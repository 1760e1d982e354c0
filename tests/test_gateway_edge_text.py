"""Gateway edge without auth: text normalisation and sensitive-word masking, PII redaction (unit, and a scan of
the real log output of requests carrying PII, in process and through uvicorn), and the refusal of placeholder
secrets in production."""

import io
import logging
import threading
import time
from pathlib import Path
from typing import Annotated

import httpx
import pytest
import yaml
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from services.gateway.edge.guard import Edge, EdgeSettings
from services.gateway.edge.redaction import RedactionFilter, install_log_redaction, redact
from services.gateway.edge.security import DEMO_KEY, DEMO_KEY_SHA256, sha256_hex
from services.gateway.edge.textnorm import TextNormalizer, normalize
from services.gateway.metrics import GatewayMetrics

PHONE, ID_NO, CARD, EMAIL = "13812345678", "11010519491231002X", "4111111111111111", "zhang.san@example.com"
DOTTED_PHONE, FULL_WIDTH_PHONE = "139.1287.6543", "１３９１２８７６５４３"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnQiOiJkZW1vIn0.c2lnbmF0dXJlLW5vdC12YWxpZA"
PII = (PHONE, ID_NO, CARD, EMAIL, "zhang.san", DOTTED_PHONE, FULL_WIDTH_PHONE, "12876543", "zhang.san%40")
CREDENTIALS = (DEMO_KEY, JWT, "eyJ0ZW5hbnQiOiJkZW1vIn0")

# ── normalisation and masking ───────────────────────────────────────────────────────────────────────


def test_normalize_folds_width_drops_invisibles_collapses_space():
    assert normalize("ＡＢＣ１２３！？") == "ABC123!?"
    assert normalize("  你好\u3000\u3000世界\t\n再见  ") == "你好 世界 再见"
    assert normalize("退\u200b款\ufeff") == "退款"  # zero-width / BOM gone
    assert normalize("订单，好的。") == "订单,好的。"  # full-width comma folds, 。 has no half-width twin
    assert normalize("bad\ud800surrogate\x00") == "badsurrogate"
    assert normalize("㈱") == "(株)"  # NFKC compatibility forms


def test_mask_replaces_each_character_case_insensitively(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# comment line\n\n  傻瓜  \nBadWord\n坏蛋\n蛋糕店\n", "utf-8")
    norm = TextNormalizer.from_file(words)
    assert norm.word_count == 4
    assert norm.mask("你这个傻瓜") == "你这个**"
    assert norm.mask("a BADWORD and badword") == "a ******* and *******"
    assert norm.mask("坏蛋糕店") == "****"  # overlapping matches are all masked
    assert norm.mask("没有问题") == "没有问题"
    assert norm.clean("傻\u200b瓜 ＢＡＤＷＯＲＤ") == "** *******"  # normalised before matching


def test_traditional_chinese_reaches_the_models_simplified(tmp_path):
    """The vocabularies and the knowledge base are simplified: 退貨運費誰出 must not reach the encoder with 貨 / 運 /
    誰 as unknown tokens. Simplified text, digits and Latin pass unchanged; a listed word is masked in either
    script; a traditional-Chinese deployment turns it off."""
    words = tmp_path / "words.txt"
    words.write_text("垃圾\n", "utf-8")
    norm = TextNormalizer.from_file(words)
    assert norm.clean("退貨運費誰出") == "退货运费谁出"
    assert norm.clean("帳號被盜了怎麼辦？") == "帐号被盗了怎么办?"
    assert norm.clean("我的快递到哪了 订单号 A2024060112345") == "我的快递到哪了 订单号 A2024060112345"
    assert norm.clean("這什麼垃圾") == norm.clean("这什么垃圾") == "这什么**"
    assert TextNormalizer.from_file(words, simplify=False).clean("退貨運費誰出") == "退貨運費誰出"
    edge = Edge(EdgeSettings(), GatewayMetrics(CollectorRegistry()))
    assert edge.check_text("發貨後幾天能收到") == "发货后几天能收到"
    off = Edge(EdgeSettings(simplify_chinese=False), GatewayMetrics(CollectorRegistry()))
    assert off.check_text("發貨後幾天能收到") == "發貨後幾天能收到"


def test_default_word_list_is_loaded():
    norm = TextNormalizer.from_file(EdgeSettings().sensitive_words_file)
    assert 5 <= norm.word_count <= 50
    assert norm.clean("你是傻逼吗") == "你是**吗"
    assert norm.clean("我想退货") == "我想退货"


def test_unreadable_word_list_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="sensitive words file"):
        TextNormalizer.from_file(tmp_path / "missing.txt")


# ── redaction ───────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 13812345678 now", "call 138****5678 now"),
        ("+86 138-1234-5678", "138****5678"),
        ("id 11010519491231002X.", "id 110***********002X."),
        ("id 110105194912310021", "id 110***********0021"),
        ("card 4111111111111111", "card ****1111"),
        ("card 4111 1111 1111 1111", "card ****1111"),
        ("mail zhang.san@example.com", "mail z***@example.com"),
        ("order 123456789012", "order 123456789012"),  # 12 digits: not a card, not a phone
        ("order 4111111111111112", "order 4111111111111112"),  # fails Luhn
        ("ts 202405121234567890123", "ts 202405121234567890123"),  # a phone is not cut out of a longer number
        ("call 139.1287.6543 now", "call 139****6543 now"),  # dotted
        ("call 139-1287.6543", "call 139****6543"),  # mixed separators
        ("手机１３９１２８７６５４３号", "手机139****6543号"),  # full-width digits
        ("手机１３９．１２８７．６５４３", "手机139****6543"),
        ("卡号４１１１　１１１１　１１１１　１１１１", "卡号****1111"),
        ("mail=zhang.san%40example.com&x=1", "mail=z***@example.com&x=1"),  # percent-encoded @
        ("ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ", "z***@example.com"),
        ("Authorization: Bearer abc.def-1", "Authorization: Bearer ***"),
        (f"token {JWT} end", "token <jwt> end"),
        (f"?api_key={DEMO_KEY}&page=2", "?api_key=***&page=2"),
        ("X-API-Key: k3y-v4lue password=hunter2", "X-API-Key: *** password=***"),
        ("ip 10.0.0.5:8001 v1.13.2", "ip 10.0.0.5:8001 v1.13.2"),  # not a phone
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_filter_redacts_args_format_string_exception_and_non_str_args():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactionFilter())
    lg = logging.getLogger("test.redaction.unit")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        lg.warning("phone %s mail %s", PHONE, EMAIL)
        lg.warning(f"f-string {ID_NO}")
        lg.warning("int arg %d", int(PHONE))
        lg.warning({"card": CARD})
        try:
            raise ValueError(f"bad card {CARD}")
        except ValueError:
            lg.exception("failed for %s", EMAIL)
    finally:
        lg.removeHandler(handler)
    out = stream.getvalue()
    assert all(p not in out for p in PII), out
    assert "138****5678" in out and "ValueError: bad card ****1111" in out and "Traceback" in out


# ── real log output of requests carrying PII ───────────────────────────────────────────────────────


class Said(BaseModel):
    text: str


def pii_app(edge: Edge) -> FastAPI:
    app = FastAPI()
    edge.install(app)
    log = logging.getLogger("services.gateway.test_route")

    @app.post("/v1/said")
    async def said(body: Said, principal: Annotated[object, Depends(edge.require("chat"))]):
        log.info("customer said %r", body.text)
        if "crash" in body.text:
            raise RuntimeError(f"could not handle {body.text}")
        return {"text": edge.check_text(body.text)}

    return app


def message_with_pii() -> str:
    return f"我的手机{PHONE} 身份证{ID_NO} 卡号{CARD} 邮箱{EMAIL} 另一个{DOTTED_PHONE} 全角{FULL_WIDTH_PHONE}"


@pytest.mark.asyncio
async def test_request_with_pii_leaves_no_pii_in_the_logs():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        edge = Edge(EdgeSettings(), GatewayMetrics(CollectorRegistry()))
        app = pii_app(edge)  # installs the redaction filter on the root logger's handlers
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            h = {"X-API-Key": DEMO_KEY}
            r = await c.post("/v1/said", json={"text": message_with_pii()}, headers=h)
            assert r.status_code == 200
            r = await c.post("/v1/said", json={"text": "crash " + message_with_pii()}, headers=h)
            assert r.status_code == 500 and PHONE not in r.text
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    out = stream.getvalue()
    assert "customer said" in out and "Traceback" in out and "RuntimeError: could not handle" in out
    assert "138****5678" in out and "110***********002X" in out and "****1111" in out
    assert all(p not in out for p in PII), out


@pytest.mark.slow
def test_uvicorn_access_and_error_logs_are_redacted(tmp_path):
    """uvicorn replaces its loggers' handlers when it starts (log_config); the edge re-installs the filter at
    ASGI start-up, so its access log (the request path with PII in the query) and error log stay clean."""
    import uvicorn

    logfile = tmp_path / "uvicorn.log"
    config_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s"},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(client_addr)s - "%(request_line)s" %(status_code)s',
            },
        },
        "handlers": {
            "default": {"class": "logging.FileHandler", "filename": str(logfile), "formatter": "default"},
            "access": {"class": "logging.FileHandler", "filename": str(logfile), "formatter": "access"},
        },
        "loggers": {
            "uvicorn.error": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in ("uvicorn.error", "uvicorn.access")
             for lg in [logging.getLogger(n)]}  # fmt: skip
    edge = Edge(EdgeSettings(), GatewayMetrics(CollectorRegistry()))
    config = uvicorn.Config(pii_app(edge), host="127.0.0.1", port=0, log_config=config_dict, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, logfile.read_text() if logfile.exists() else "no log"
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        # every header and field that reaches a log line: the path, the query string, the client address
        # (X-Forwarded-For from a trusted proxy: uvicorn trusts 127.0.0.1), the request id (error log)
        h = {"X-API-Key": DEMO_KEY, "X-Forwarded-For": DOTTED_PHONE, "X-Request-ID": DOTTED_PHONE}
        query = f"phone={PHONE}&mail=zhang.san%40example.com&api_key={DEMO_KEY}&jwt={JWT}&p={DOTTED_PHONE}"
        r = httpx.post(f"{base}/v1/said?{query}", json={"text": message_with_pii()}, headers=h)
        assert r.status_code == 200
        r = httpx.post(f"{base}/v1/said?card={CARD}", json={"text": "crash " + message_with_pii()}, headers=h)
        assert r.status_code == 500
        r = httpx.get(
            f"{base}/v1/{FULL_WIDTH_PHONE}/{DOTTED_PHONE}", headers=h
        )  # decoded into the logged path
        assert r.status_code == 404
    finally:
        server.should_exit = True
        thread.join(10)
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            for extra in lg.handlers[:]:
                if extra not in handlers:
                    lg.removeHandler(extra)
                    extra.close()
            lg.setLevel(level)
            lg.propagate = propagate
    out = logfile.read_text("utf-8")
    assert "/v1/said?phone=***&mail=***&api_key=***&jwt=***&p=*** HTTP/1.1" in out, out
    assert "Exception in ASGI application" in out and "/v1/139****6543/139****6543" in out, out
    assert all(p not in out for p in PII + CREDENTIALS), out


def test_chat_fields_and_headers_with_pii_leave_none_in_the_gateway_logs(tmp_path):
    """The real gateway app (fake workers): every client field the chat log line writes (session_id, channel),
    the other fields, the request id, a refused JWT and a key in the query string."""
    from fastapi.testclient import TestClient

    from tests.gateway_app import build

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        app, *_ = build(tmp_path)
        with TestClient(app) as client:
            body = {
                "session_id": DOTTED_PHONE,
                "channel": EMAIL,
                "user_id": FULL_WIDTH_PHONE,
                "text": f"手机{FULL_WIDTH_PHONE} 邮箱{EMAIL} 卡{CARD}",  # within build()'s 64 characters
            }
            h = {"X-API-Key": DEMO_KEY, "X-Request-ID": DOTTED_PHONE}
            r = client.post(f"/v1/chat?api_key={DEMO_KEY}", json=body, headers=h)
            assert r.status_code == 200, r.text
            r = client.post("/v1/chat", json=body, headers={"Authorization": f"Bearer {JWT}"})
            assert r.status_code == 401
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    out = stream.getvalue()
    assert "chat session=139****6543 channel=z***@example.com" in out, out
    assert all(p not in out for p in PII + CREDENTIALS), out


def test_install_is_idempotent():
    handler = logging.StreamHandler(io.StringIO())
    lg = logging.getLogger("test.redaction.idempotent")
    lg.addHandler(handler)
    try:
        install_log_redaction(lg)
        install_log_redaction(lg)
        assert sum(isinstance(f, RedactionFilter) for f in handler.filters) == 1
    finally:
        lg.removeHandler(handler)


# ── placeholder secrets ─────────────────────────────────────────────────────────────────────────────


def own_keys(tmp_path: Path, *digests: str) -> Path:
    path = tmp_path / "prod_keys.yaml"
    keys = [{"tenant": f"t{i}", "sha256": d, "scopes": ["chat"]} for i, d in enumerate(digests)]
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def test_production_refuses_the_demo_keys_file(monkeypatch):
    monkeypatch.setenv("KEFU_GATEWAY_MODE", "production")
    with pytest.raises(
        ValidationError, match="KEFU_GATEWAY_API_KEYS_FILE: production refuses the shipped demo"
    ):
        EdgeSettings()


def test_production_refuses_the_demo_digest_in_another_file(tmp_path):
    keys = own_keys(tmp_path, sha256_hex("a real key"), DEMO_KEY_SHA256)
    with pytest.raises(ValidationError, match="KEFU_GATEWAY_API_KEYS_FILE: .* holds the demo key's digest"):
        EdgeSettings(mode="production", api_keys_file=keys)


@pytest.mark.parametrize(
    ("jwt", "message"),
    [
        ({"jwt_secret": "change-me-change-me-change-me-change-me"}, "KEFU_GATEWAY_JWT_SECRET: a placeholder"),
        ({"jwt_secret": "secret"}, "KEFU_GATEWAY_JWT_SECRET: a placeholder"),
        ({"jwt_secret": "k8Zq1-short"}, "KEFU_GATEWAY_JWT_SECRET: 11 bytes is too short"),
        ({"jwt_enabled": True}, "KEFU_GATEWAY_JWT_ENABLED: JWT is on but neither"),
    ],
)
def test_production_refuses_weak_jwt_secrets(tmp_path, jwt, message):
    keys = own_keys(tmp_path, sha256_hex("a real key"))
    with pytest.raises(ValidationError, match=message):
        EdgeSettings(mode="production", api_keys_file=keys, **jwt)


def test_production_accepts_real_secrets_and_development_accepts_the_demo(tmp_path):
    keys = own_keys(tmp_path, sha256_hex("a real key"))
    s = EdgeSettings(
        mode="production", api_keys_file=keys, jwt_secret="Qm9v3S1xT7pL2wZ8rK4dN6bH0jF5cV1yX3gA9eU2"
    )
    Edge(s, GatewayMetrics(CollectorRegistry()))
    dev = EdgeSettings(jwt_secret="change-me")  # development: allowed (with a warning for the demo key)
    assert dev.mode == "development" and dev.jwt_on


def test_malformed_keys_file_names_the_entry(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"keys": [{"tenant": "t", "sha256": "abc", "scopes": ["chat"]}]}))
    with pytest.raises(ValueError, match=r"keys\[0\]: sha256"):
        Edge(EdgeSettings(api_keys_file=bad), GatewayMetrics(CollectorRegistry()))
    bad.write_text(yaml.safe_dump({"keys": [{"tenant": "t", "sha256": "a" * 64, "scopes": ["root"]}]}))
    with pytest.raises(ValueError, match="unknown scopes"):
        Edge(EdgeSettings(api_keys_file=bad), GatewayMetrics(CollectorRegistry()))
