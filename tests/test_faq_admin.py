"""FAQ admin API contract: every route and error path over the in-memory store (httpx + ASGITransport), and
write-then-search visibility plus a real re-index on an embedded milvus-lite file."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import threading
import time
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from services.faq.admin import FaqAdminSettings, create_admin_router, milvus_reindexer, require_admin_key
from services.faq.admin_formats import join_multi, split_multi
from services.faq.domain import FaqEntry, StoreUnavailable
from services.faq.store import InMemoryFaqStore
from services.faq.testing import DEMO_KB, FailingEmbedder, HashingEmbedder
from tests.demo_kb import FAQS

DIM = 64
EMB = HashingEmbedder(DIM)
KEY = "admin-key-for-tests"
READER_KEY = "reader-key-for-tests"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
READER_DIGEST = hashlib.sha256(READER_KEY.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {KEY}"}
PREFIX = "/admin/faq"
DEMO_TEXT = DEMO_KB.read_text("utf-8")
JSONL = {"content-type": "application/x-ndjson"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@asynccontextmanager
async def admin_api(
    store=None, embedder=EMB, reindexer=None, auth=True, bm25_refresher=None, key_check=None, **settings
):
    store = store if store is not None else InMemoryFaqStore(DIM)
    keys = {DIGEST: {"faq:admin"}, READER_DIGEST: {"faq:read"}}
    router = create_admin_router(
        store,
        embedder,
        key_check if key_check is not None else require_admin_key(keys),
        settings=FaqAdminSettings(**settings),
        reindexer=reindexer,
        bm25_refresher=bm25_refresher,
    )
    app = FastAPI()
    app.include_router(router, prefix=PREFIX)
    transport = httpx.ASGITransport(app=app)
    headers = AUTH if auth else {}
    async with httpx.AsyncClient(
        transport=transport, base_url=f"http://gateway{PREFIX}", headers=headers, timeout=30
    ) as client:
        client.store = store
        client.admin = router.faq_admin
        yield client


def faq(faq_id: str, question: str, *alternatives: str, category="物流查询", **kw) -> dict:
    return {
        "faq_id": faq_id,
        "question": question,
        "answer": f"{question}的答案",
        "category": category,
        "alternatives": list(alternatives),
        **kw,
    }


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert err["code"] == code, err
    assert err["request_id"] == response.headers["x-request-id"]
    return err


async def import_demo(c) -> dict:
    r = await c.post("/import", content=DEMO_TEXT.encode(), headers=JSONL)
    assert r.status_code == 200, r.text
    return r.json()


# ── authentication, request ids ─────────────────────────────────────────────────────────────────────

ROUTES = [
    ("POST", "/faqs"),
    ("GET", "/faqs"),
    ("GET", "/faqs/faq-001"),
    ("PUT", "/faqs/faq-001"),
    ("DELETE", "/faqs/faq-001"),
    ("POST", "/search"),
    ("POST", "/import?format=jsonl"),
    ("GET", "/export"),
    ("POST", "/reindex"),
    ("GET", "/reindex"),
    ("GET", "/health"),
]


def test_every_route_needs_an_admin_key():
    async def main():
        async with admin_api(auth=False) as c:
            for method, path in ROUTES:
                r = await c.request(method, path)
                err = error_of(r, 401, "unauthorized")
                assert "Bearer" in err["message"] and r.headers["www-authenticate"].startswith("Bearer")
            for header in (f"Bearer {KEY}x", f"Basic {KEY}", "Bearer ", KEY):
                r = await c.get("/faqs", headers={"Authorization": header})
                error_of(r, 401, "unauthorized")
            r = await c.get("/faqs", headers={"Authorization": f"Bearer {READER_KEY}"})
            assert "faq:admin" in error_of(r, 403, "forbidden")["message"]
            r = await c.get("/faqs", headers={"Authorization": f"bearer {KEY}"})
            assert r.status_code == 200

    run(main())


def test_admin_keys_must_be_sha256_digests():
    with pytest.raises(ValueError, match="sha256"):
        require_admin_key({KEY})
    with pytest.raises(ValueError, match="sha256"):  # the setting: a key in clear is refused at start
        FaqAdminSettings(api_key_sha256=f"{DIGEST},{READER_KEY}").auth()
    # the setting's digests: blanks, upper-case hex and an empty item after a trailing comma are tolerated
    check = FaqAdminSettings(api_key_sha256=f" {DIGEST.upper()} ,").auth()

    async def main():
        async with admin_api(key_check=check, auth=False) as c:
            r = await c.get("/faqs", headers=AUTH)
            assert r.status_code == 200, r.text
            for key in (READER_KEY, DIGEST, DIGEST.upper()):  # another key; the digest itself is no key
                r = await c.get("/faqs", headers={"Authorization": f"Bearer {key}"})
                error_of(r, 401, "unauthorized")

    run(main())


def test_request_id_is_echoed_or_generated():
    async def main():
        async with admin_api() as c:
            r = await c.get("/faqs/nope", headers={"X-Request-ID": "req-42.a"})
            assert error_of(r, 404, "faq_not_found")["request_id"] == "req-42.a"
            r = await c.get("/faqs", headers={"X-Request-ID": "bad id\twith spaces"})
            assert r.status_code == 200 and len(r.headers["x-request-id"]) == 36
            r = await c.get("/faqs/nope", headers={"X-Request-ID": "x" * 200})
            assert error_of(r, 404, "faq_not_found")["request_id"] != "x" * 200

    run(main())


# ── single FAQs ─────────────────────────────────────────────────────────────────────────────────────


def test_create_get_update_delete():
    async def main():
        async with admin_api() as c:
            body = faq("f-1", "默认发什么快递？", "用什么快递", tags=["顺丰"])
            r = await c.post("/faqs", json=body)
            assert r.status_code == 201, r.text
            assert r.headers["location"].endswith(f"{PREFIX}/faqs/f-1")
            created = r.json()
            assert {k: created[k] for k in body} == body and created["updated_at"].endswith("Z")

            r = await c.get("/faqs/f-1")
            assert r.status_code == 200 and r.json() == created

            r = await c.put("/faqs/f-1", json={**body, "faq_id": None, "alternatives": ["能发顺丰吗"]})
            assert r.status_code == 200 and r.json()["alternatives"] == ["能发顺丰吗"]
            assert c.store.get("f-1").alternatives == ["能发顺丰吗"]

            r = await c.delete("/faqs/f-1")
            assert r.status_code == 204 and r.content == b""
            error_of(await c.get("/faqs/f-1"), 404, "faq_not_found")
            error_of(await c.delete("/faqs/f-1"), 404, "faq_not_found")
            error_of(await c.put("/faqs/f-1", json=body), 404, "faq_not_found")

    run(main())


def test_create_refuses_a_taken_id_and_a_taken_phrasing():
    async def main():
        async with admin_api() as c:
            assert (
                await c.post("/faqs", json=faq("f-1", "可以开增值税专用发票吗", "能开专票吗"))
            ).status_code == 201
            err = error_of(await c.post("/faqs", json=faq("f-1", "别的问题")), 409, "faq_exists")
            assert "f-1" in err["message"]
            err = error_of(await c.post("/faqs", json=faq("f-2", "能开 专票吗？")), 409, "duplicate_question")
            assert "f-1" in err["message"] and "f-2" in err["message"]
            error_of(await c.get("/faqs/f-2"), 404, "faq_not_found")  # nothing written
            assert (await c.post("/faqs", json=faq("f-2", "怎么退货"))).status_code == 201
            err = error_of(
                await c.put("/faqs/f-2", json=faq("f-2", "怎么退货", "能开专票吗")), 409, "duplicate_question"
            )
            assert "f-1" in err["message"] and "f-2" in err["message"]
            assert c.store.get("f-2").alternatives == []

    run(main())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (faq("f-1", "   "), "question"),
        ({**faq("f-1", "问题"), "answer": ""}, "answer"),
        ({k: v for k, v in faq("f-1", "问题").items() if k != "answer"}, "answer"),
        (faq("bad id", "问题"), "faq_id"),
        (faq("f-1", "问题", "问题？"), "repeats"),
        ({**faq("f-1", "问题"), "colour": "red"}, "colour"),
        ({**faq("f-1", "问题"), "alternatives": "不是列表"}, "alternatives"),
        ({**faq("f-1", "问题"), "updated_at": "2020-01-01T00:00:00Z"}, "updated_at"),
        (faq("f-1", "问" * 201), "max 200"),
    ],
)
def test_invalid_faq_is_400_naming_the_field(body, field):
    async def main():
        async with admin_api() as c:
            r = await c.post("/faqs", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] in ("invalid_faq", "invalid_request")
            assert field in r.json()["error"]["message"]
            assert c.store.count() == 0

    run(main())


def test_malformed_requests_are_400():
    async def main():
        async with admin_api() as c:
            r = await c.post("/faqs", content=b'{"faq_id": ', headers={"content-type": "application/json"})
            assert "not JSON" in error_of(r, 400, "invalid_request")["message"]
            await c.post("/faqs", json=faq("f-1", "问题"))
            r = await c.put("/faqs/f-1", json=faq("f-2", "问题"))
            assert "faq_id" in error_of(r, 400, "invalid_faq")["message"]

    run(main())


def test_json_bodies_are_limited():
    async def main():
        async with admin_api(max_body_bytes=4096) as c:
            big = faq("f-1", "问题", answer="答" * 3000)
            error_of(await c.post("/faqs", json=big), 413, "payload_too_large")

            async def chunked():  # no Content-Length: counted while read
                for _ in range(10):
                    yield b" " * 1000

            r = await c.post("/faqs", content=chunked(), headers={"content-type": "application/json"})
            error_of(r, 413, "payload_too_large")
            assert c.store.count() == 0

    run(main())


class Utf8Embedder:
    """Encodes its texts as UTF-8 first, as the HTTP call to the encoder does (a lone surrogate fails there)."""

    version, dim = EMB.version, EMB.dim

    def embed(self, texts):
        for t in texts:
            t.encode("utf-8")
        return EMB.embed(texts)


LONE = "\ud800"  # a JSON string may carry it ("\\ud800"); no encoder, store or response can


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (faq("f-1", f"问题{LONE}"), "question"),
        ({**faq("f-1", "问题"), "answer": f"{LONE}答案"}, "answer"),
        (faq("f-1", "问题", "别的问法", f"第二个{LONE}问法"), "alternative 2"),
        ({**faq("f-1", "问题"), "category": LONE}, "category"),
        ({**faq("f-1", "问题"), "tags": ["好", f"标签{LONE}"]}, "tag"),
    ],
)
def test_a_lone_surrogate_is_400_naming_the_field(body, field):
    """Issue 11.8: was 503 embedder_unavailable with Retry-After (the encoder call failed), or a 500 after the
    FAQ was written (the response could not be encoded)."""

    async def main():
        async with admin_api(embedder=Utf8Embedder()) as c:
            raw = json.dumps(body).encode()  # \ud800 escaped in the JSON text, as a client sends it
            for method, path in (("POST", "/faqs"), ("PUT", "/faqs/f-1")):
                r = await c.request(method, path, content=raw, headers={"content-type": "application/json"})
                err = error_of(r, 400, "invalid_faq")
                assert field in err["message"] and "lone surrogate" in err["message"]
                assert "retry-after" not in r.headers
            r = await c.post("/import", content=raw + b"\n", headers=JSONL)
            rows = error_of(r, 400, "import_rejected")["rows"]
            assert "lone surrogate" in rows[0]["error"] and field in rows[0]["error"]
            assert c.store.count() == 0

    run(main())


def test_bad_import_input_is_400_naming_the_problem():
    """Issue 11.8: a charset that is not a text encoding, and JSON nested 100,000 deep, were 500s."""

    async def main():
        async with admin_api(embedder=Utf8Embedder()) as c:
            ok = "id,question,answer\nf-1,问题,答案\n".encode()
            for charset in ("rot13", "base64", "hex", "zlib", "no-such-charset"):
                r = await c.post(
                    "/import", content=ok, headers={"content-type": f"text/csv; charset={charset}"}
                )
                assert charset in error_of(r, 400, "invalid_charset")["message"]
            deep = "[" * 100_000 + "]" * 100_000
            r = await c.post("/import", content=f'{{"id": {deep}}}\n'.encode(), headers=JSONL)
            rows = error_of(r, 400, "import_rejected")["rows"]
            assert rows == [{"row": 1, "error": "JSON nested too deeply (a FAQ record is a flat object)"}]
            r = await c.post("/faqs", content=deep.encode(), headers={"content-type": "application/json"})
            assert "nested too deeply" in error_of(r, 400, "invalid_request")["message"]
            query = json.dumps({"text": f"退款{LONE}怎么办"}).encode()
            r = await c.post("/search", content=query, headers={"content-type": "application/json"})
            assert "text" in error_of(r, 400, "invalid_request")["message"]
            assert c.store.count() == 0
            r = await c.post("/import", content=ok, headers={"content-type": "text/csv; charset=UTF8"})
            assert r.status_code == 200 and c.store.count() == 1  # a text charset under another spelling

    run(main())


# ── listing and search ──────────────────────────────────────────────────────────────────────────────


def test_paging_and_its_bounds():
    async def main():
        async with admin_api(page_limit=5, default_page=4) as c:
            records = [
                faq(f"f-{i:02d}", f"问题{i}", category="退款" if i % 3 == 0 else "物流查询")
                for i in range(1, 8)
            ]
            r = await c.post("/import", content=jsonl(*records[::-1]).encode(), headers=JSONL)
            assert r.status_code == 200, r.text
            page = (await c.get("/faqs")).json()
            assert page["total"] == 7 and page["limit"] == 4 and [e["faq_id"] for e in page["items"]] == [
                "f-01", "f-02", "f-03", "f-04"
            ]  # fmt: skip
            page = (await c.get("/faqs", params={"offset": 5, "limit": 5})).json()
            assert [e["faq_id"] for e in page["items"]] == ["f-06", "f-07"] and page["offset"] == 5
            page = (await c.get("/faqs", params={"offset": 50})).json()
            assert page == {"items": [], "total": 7, "offset": 50, "limit": 4}
            page = (await c.get("/faqs", params={"category": "退款"})).json()
            assert page["total"] == 2 and [e["faq_id"] for e in page["items"]] == ["f-03", "f-06"]
            for params, name in (
                ({"limit": 6}, "limit"),
                ({"limit": 0}, "limit"),
                ({"offset": -1}, "offset"),
            ):
                err = error_of(await c.get("/faqs", params=params), 400, "invalid_request")
                assert name in err["message"]

    run(main())


def test_search():
    async def main():
        async with admin_api() as c:
            await import_demo(c)
            for mode in ("hybrid", "dense", "bm25"):
                r = await c.post("/search", json={"text": "能不能发顺丰", "top_k": 3, "mode": mode})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["mode"] == mode and len(body["hits"]) == 3
                top = body["hits"][0]
                assert top["faq_id"] == "faq-004" and top["matched_text"] == "能不能发顺丰"
                assert top["source"] == mode and 0 <= top["score"] <= 1
            r = await c.post("/search", json={"text": "退款多久到账"})
            assert len(r.json()["hits"]) == 5
            for bad, name in (
                ({"text": "退款", "top_k": 0}, "top_k"),
                ({"text": "退款", "top_k": 101}, "top_k"),
                ({"text": "退款", "mode": "fuzzy"}, "mode"),
                ({"text": ""}, "text"),
                ({"query": "退款"}, "text"),
            ):
                assert name in error_of(await c.post("/search", json=bad), 400, "invalid_request")["message"]

    run(main())


# ── import and export ───────────────────────────────────────────────────────────────────────────────


def test_import_jsonl_then_again_changes_nothing():
    async def main():
        async with admin_api() as c:
            report = await import_demo(c)
            assert report["rows"] == FAQS and len(report["created"]) == FAQS and report["faqs"] == FAQS
            assert report["updated"] == [] and report["deleted"] == [] and report["mode"] == "upsert"
            assert c.store.get("faq-004").tags == ["顺丰", "快递公司"]
            before = c.store.get("faq-004").updated_at
            report = await import_demo(c)
            assert report["created"] == [] and report["updated"] == [] and report["unchanged"] == FAQS
            assert c.store.get("faq-004").updated_at == before  # not rewritten

    run(main())


def test_import_csv_with_multi_values_bom_and_quotes():
    rows = [
        ["faq_id", "question", "answer", "category", "alternatives", "tags"],
        ["c-1", "能开发票吗", "可以，在“订单详情”申请。\n纸质发票另寄。", "支付/账单", "能开票吗| 发票怎么开 |", "发票|电子发票"],
        ["c-2", "A|B 两款有什么区别", "见详情页", "", r"A\|B 区别|两款差在哪", ""],
    ]  # fmt: skip
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)

    async def main():
        async with admin_api() as c:
            data = ("\ufeff" + buf.getvalue()).encode()
            r = await c.post("/import", content=data, headers={"content-type": "text/csv"})
            assert r.status_code == 200, r.text
            assert r.json()["created"] == ["c-1", "c-2"] and r.json()["format"] == "csv"
            one, two = c.store.get("c-1"), c.store.get("c-2")
            assert one.alternatives == ["能开票吗", "发票怎么开"] and one.tags == ["发票", "电子发票"]
            assert one.answer == "可以，在“订单详情”申请。\n纸质发票另寄。" and one.category == "支付/账单"
            assert two.alternatives == ["A|B 区别", "两款差在哪"] and two.tags == [] and two.category == ""

    run(main())


def test_multi_value_cells_round_trip():
    for values in (["a|b", "c\\d", "e\\|f", "g\\"], ["只有一个"], []):
        assert split_multi(join_multi(values)) == values


def test_import_is_all_or_nothing_with_every_bad_row_listed():
    async def main():
        async with admin_api() as c:
            await c.post("/faqs", json=faq("kept", "可以开增值税专用发票吗", "能开专票吗"))
            records = [
                faq("n-1", "怎么退款"),  # row 1: fine
                faq("n-2", " "),  # row 2: empty question
                faq("n-3", "退款多久到账", "怎么退款？"),  # row 3: phrasing of row 1
                faq("n-4", "能开 专票吗"),  # row 4: phrasing of a stored FAQ the file does not carry
                faq("n-1", "别的问题"),  # row 5: id repeats row 1
                faq("n-6", "一切正常"),  # row 6: fine
            ]
            text = jsonl(*records[:2]) + "{not json\n" + jsonl(*records[2:])  # row 3: broken line
            r = await c.post("/import", content=text.encode(), headers=JSONL)
            err = error_of(r, 400, "import_rejected")
            assert "nothing was imported" in err["message"]
            by_row = {e["row"]: e["error"] for e in err["rows"]}
            assert sorted(by_row) == [2, 3, 4, 5, 6]
            assert "question" in by_row[2]
            assert "not JSON" in by_row[3]
            assert "n-3" in by_row[4] and "n-1" in by_row[4] and "row 1" in by_row[4]
            assert "n-4" in by_row[5] and "kept" in by_row[5]
            assert "repeats row 1" in by_row[6]
            page = (await c.get("/faqs")).json()
            assert [e["faq_id"] for e in page["items"]] == ["kept"]  # nothing applied

            csv_text = "id,question,answer\nx-1,好问题,答\nx-2,,答\nx-3,另一个,答,多余\n"
            r = await c.post("/import", params={"format": "csv"}, content=csv_text.encode())
            rows = error_of(r, 400, "import_rejected")["rows"]
            assert [e["row"] for e in rows] == [3, 4]
            assert "question" in rows[0]["error"] and "4 fields" in rows[1]["error"]
            assert c.store.count() == 1

    run(main())


def test_import_file_level_errors():
    async def main():
        async with admin_api() as c:
            ok = jsonl(faq("f-1", "问题")).encode()
            err = error_of(await c.post("/import", content=ok), 400, "import_rejected")
            assert "format=jsonl" in err["message"]
            r = await c.post("/import", params={"format": "xml"}, content=ok)
            assert "format" in error_of(r, 400, "invalid_request")["message"]
            r = await c.post("/import", params={"format": "csv"}, content="编号,问题\n1,2\n".encode())
            rows = error_of(r, 400, "import_rejected")["rows"]
            assert rows[0]["row"] == 1 and "unknown column" in rows[0]["error"]
            r = await c.post("/import", content=b"\n\n", headers=JSONL)
            assert "no FAQ" in error_of(r, 400, "import_rejected")["rows"][0]["error"]
            bad = jsonl(faq("f-1", "问题")).encode() + "问题".encode("gbk") + b"\n"
            err = error_of(await c.post("/import", content=bad, headers=JSONL), 400, "import_rejected")
            assert "line 2" in err["message"] and "charset" in err["message"]
            assert c.store.count() == 0

            gbk = "id,question,answer\ng-1,可以开发票吗,可以\n".encode("gb18030")
            r = await c.post("/import", content=gbk, headers={"content-type": "text/csv; charset=gb18030"})
            assert r.status_code == 200 and c.store.get("g-1").question == "可以开发票吗"

    run(main())


def test_import_body_is_limited():
    async def main():
        async with admin_api(max_import_bytes=2048) as c:
            big = jsonl(*(faq(f"f-{i}", f"问题{i}") for i in range(40))).encode()
            error_of(await c.post("/import", content=big, headers=JSONL), 413, "payload_too_large")

            async def chunked():
                for i in range(0, len(big), 500):
                    yield big[i : i + 500]

            error_of(await c.post("/import", content=chunked(), headers=JSONL), 413, "payload_too_large")
            assert c.store.count() == 0

    run(main())


def test_import_replace_all_and_dry_run():
    async def main():
        async with admin_api() as c:
            await import_demo(c)
            keep = [json.loads(line) for line in DEMO_TEXT.splitlines()[:10]]
            keep[0]["answer"] = "新的答案"
            # a phrasing moves from a FAQ being deleted to a new one: allowed, deletes go first
            moved = json.loads(DEMO_TEXT.splitlines()[50])["alternatives"][0]
            keep.append({"id": "new-1", "question": moved, "answer": "答"})
            text = jsonl(*keep).encode()

            r = await c.post(
                "/import", params={"mode": "replace_all", "dry_run": True}, content=text, headers=JSONL
            )
            report = r.json()
            assert r.status_code == 200 and report["dry_run"] is True
            assert report["created"] == ["new-1"] and report["updated"] == ["faq-001"]
            assert report["unchanged"] == 9 and len(report["deleted"]) == 81 and report["faqs"] == 11
            assert c.store.count() == FAQS  # dry run: nothing changed

            r = await c.post(
                "/import", params={"mode": "upsert", "dry_run": True}, content=text, headers=JSONL
            )
            assert "already belongs to faq-051" in error_of(r, 400, "import_rejected")["rows"][0]["error"]

            r = await c.post("/import", params={"mode": "replace_all"}, content=text, headers=JSONL)
            assert r.status_code == 200 and r.json()["faqs"] == 11
            assert c.store.count() == 11 and c.store.get("faq-001").answer == "新的答案"
            hits = (await c.post("/search", json={"text": moved, "mode": "bm25", "top_k": 1})).json()["hits"]
            assert hits[0]["faq_id"] == "new-1"

            r = await c.post("/import", params={"mode": "replace_all"}, content=b"", headers=JSONL)
            error_of(r, 400, "import_rejected")
            assert c.store.count() == 11

    run(main())


class FlakyStore(InMemoryFaqStore):
    """Fails the next upsert (after a delete went through): a backend dying part-way through an import."""

    fail_upserts = 0

    def upsert(self, entries, vectors):
        if self.fail_upserts:
            self.fail_upserts -= 1
            raise StoreUnavailable("milvus upsert failed: connection reset")
        return super().upsert(entries, vectors)


def test_a_store_failure_mid_import_is_rolled_back():
    async def main():
        store = FlakyStore(DIM)
        async with admin_api(store=store) as c:
            await import_demo(c)
            before = (await c.get("/export")).content
            records = [json.loads(line) for line in DEMO_TEXT.splitlines()[:5]]
            records[0]["answer"] = "改过的答案"
            records.append({"id": "new-1", "question": "全新的问题", "answer": "答"})
            store.fail_upserts = 1
            r = await c.post(
                "/import", params={"mode": "replace_all"}, content=jsonl(*records).encode(), headers=JSONL
            )
            err = error_of(r, 503, "store_unavailable")
            assert "connection reset" in err["message"] and r.headers["retry-after"]
            assert (await c.get("/export")).content == before

    run(main())


def test_export_round_trip():
    async def main():
        async with admin_api() as c:
            await import_demo(c)
            r = await c.get("/export")
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
            assert "attachment" in r.headers["content-disposition"] and r.headers["x-faq-count"] == str(FAQS)
            assert r.text == DEMO_TEXT  # the faq.jsonl format, ordered by id
            r_csv = await c.get("/export", params={"format": "csv"})
            assert (
                r_csv.headers["content-type"].startswith("text/csv") and r_csv.content[:3] == b"\xef\xbb\xbf"
            )
            csv_bytes = r_csv.content
        async with admin_api() as fresh:  # export -> import -> export is the identity, in both formats
            r = await fresh.post("/import", content=csv_bytes, headers={"content-type": "text/csv"})
            assert r.status_code == 200 and len(r.json()["created"]) == FAQS
            assert (await fresh.get("/export")).text == DEMO_TEXT
            assert (await fresh.get("/export", params={"format": "csv"})).content == csv_bytes

    run(main())


FORMULAS = [
    faq("x-1", '=HYPERLINK("http://evil.example","点我领券")', "+86 客服电话多少", category="@运营"),
    faq("x-2", "-5元券怎么用", "'=不是公式吗", tags=["@会员", "=标签"], answer="@所有人：\t满减"),
    faq("x-3", "'单引号开头的问题", "''=两个引号", answer="=1+1"),
]


def test_csv_export_neutralises_formulas_and_round_trips():
    """Issue 11.5 (OWASP CSV injection): no exported cell starts with = + - @ tab or CR, so a spreadsheet shows
    text; importing the export gives back the same FAQs, and export -> import -> export is the identity."""

    async def main():
        async with admin_api() as c:
            r = await c.post("/import", content=jsonl(*FORMULAS).encode(), headers=JSONL)
            assert r.status_code == 200, r.text
            jsonl_export = (await c.get("/export")).text
            csv_bytes = (await c.get("/export", params={"format": "csv"})).content
        rows = list(csv.reader(io.StringIO(csv_bytes.decode("utf-8-sig"), newline="")))
        cells = [cell for row in rows[1:] for cell in row]
        assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
        assert '\'=HYPERLINK("http://evil.example","点我领券")' in cells
        assert "'单引号开头的问题" in cells  # an apostrophe before plain text is left alone
        async with admin_api() as fresh:
            r = await fresh.post("/import", content=csv_bytes, headers={"content-type": "text/csv"})
            assert r.status_code == 200 and len(r.json()["created"]) == 3, r.text
            assert fresh.store.get("x-1").question == FORMULAS[0]["question"]
            assert fresh.store.get("x-2").alternatives == ["'=不是公式吗"]
            assert fresh.store.get("x-2").tags == ["@会员", "=标签"]
            assert fresh.store.get("x-3").alternatives == ["''=两个引号"]
            assert (await fresh.get("/export")).text == jsonl_export
            assert (await fresh.get("/export", params={"format": "csv"})).content == csv_bytes

    run(main())


# ── re-index and maintenance ────────────────────────────────────────────────────────────────────────


class BlockingReindexer:
    def __init__(self, fail: bool = False):
        self.release = threading.Event()
        self.started = threading.Event()
        self.entries = None
        self.fail = fail

    def __call__(self, entries):
        self.entries = entries
        self.started.set()
        assert self.release.wait(20)
        if self.fail:
            raise RuntimeError("the new collection lost a batch")
        return {"collection": "faq_v2", "faqs": len(entries)}


def test_writes_answer_503_while_a_reindex_runs():
    async def main():
        reindexer = BlockingReindexer()
        async with admin_api(reindexer=reindexer, maintenance_retry_after_s=7) as c:
            await c.post("/faqs", json=faq("f-1", "怎么退款"))
            r = await c.post("/reindex")
            assert r.status_code == 202 and r.json()["state"] == "running"
            assert r.headers["location"].endswith(f"{PREFIX}/reindex")
            await asyncio.to_thread(reindexer.started.wait, 10)
            assert [e.faq_id for e in reindexer.entries] == ["f-1"]

            for method, path, kw in (
                ("POST", "/faqs", {"json": faq("f-2", "怎么换货")}),
                ("PUT", "/faqs/f-1", {"json": faq("f-1", "怎么退款呢")}),
                ("DELETE", "/faqs/f-1", {}),
                ("POST", "/import", {"content": jsonl(faq("f-3", "问题")).encode(), "headers": JSONL}),
            ):
                r = await c.request(method, path, **kw)
                assert "re-index" in error_of(r, 503, "maintenance")["message"]
                assert r.headers["retry-after"] == "7"
            error_of(await c.post("/reindex"), 409, "reindex_running")
            # reads and searches keep working
            assert (await c.get("/faqs/f-1")).status_code == 200
            assert (await c.post("/search", json={"text": "怎么退款"})).json()["hits"][0]["faq_id"] == "f-1"
            assert (await c.get("/export")).status_code == 200
            health = (await c.get("/health")).json()
            assert health["maintenance"] is True and health["reindex"] == "running" and health["faqs"] == 1

            reindexer.release.set()
            for _ in range(200):
                status = (await c.get("/reindex")).json()
                if status["state"] != "running":
                    break
                await asyncio.sleep(0.02)
            assert status["state"] == "succeeded" and status["report"]["faqs"] == 1
            assert status["finished_at"] >= status["started_at"]
            assert (await c.post("/faqs", json=faq("f-2", "怎么换货"))).status_code == 201

    run(main())


def test_reindex_failure_and_absence():
    async def main():
        async with admin_api() as c:
            assert (await c.get("/reindex")).json()["state"] == "idle"
            error_of(await c.post("/reindex"), 501, "not_configured")
        reindexer = BlockingReindexer(fail=True)
        reindexer.release.set()
        async with admin_api(reindexer=reindexer) as c:
            r = await c.post("/reindex", params={"wait": True})
            assert "lost a batch" in error_of(r, 500, "reindex_failed")["message"]
            status = (await c.get("/reindex")).json()
            assert status["state"] == "failed" and "lost a batch" in status["error"]
            assert (await c.post("/faqs", json=faq("f-1", "问题"))).status_code == 201  # writes resumed

    run(main())


class FlakyRefresher:
    """A BM25 refresher whose store is down for its first `failures` calls."""

    def __init__(self, failures: int):
        self.failures, self.calls, self.rebuilt = failures, 0, []

    def __call__(self, read_entries):
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("milvus list_aliases failed: Fail connecting to server on 127.0.0.1:19530")
        self.rebuilt.append(sorted(e.faq_id for e in read_entries()))
        return {"faqs": len(self.rebuilt[-1])}


def test_a_failed_bm25_refresh_is_retried_until_it_succeeds(caplog):
    """Issue 14.5: FAQs acknowledged just before the store went down must reach keyword ranking once it is back,
    without waiting for another write: the refresh is retried with a growing wait until it succeeds."""

    async def main():
        refresher = FlakyRefresher(failures=3)
        async with admin_api(bm25_refresher=refresher, bm25_refresh_s=0.01, bm25_retry_max_s=0.02) as c:
            assert (await c.post("/faqs", json=faq("f-1", "问题"))).status_code == 201
            assert (await c.post("/faqs", json=faq("f-2", "另一个问题"))).status_code == 201
            await asyncio.wait_for(c.admin._refresh_task, 10)
            assert refresher.calls == 4 and refresher.rebuilt == [["f-1", "f-2"]]

    run(main())
    retries = [r.getMessage() for r in caplog.records if "BM25 refresh failed" in r.getMessage()]
    assert len(retries) == 3 and all("retrying in" in m for m in retries)


def test_an_encoder_failure_writes_nothing():
    async def main():
        async with admin_api(embedder=FailingEmbedder(EMB, fail_on=1)) as c:
            r = await c.post("/faqs", json=faq("f-1", "问题"))
            assert "encoder" in error_of(r, 503, "embedder_unavailable")["message"]
            assert r.headers["retry-after"]
            r = await c.post("/import", content=DEMO_TEXT.encode(), headers=JSONL)
            error_of(r, 503, "embedder_unavailable")
            assert c.store.count() == 0
            error_of(await c.post("/search", json={"text": "退款"}), 503, "embedder_unavailable")
            assert (await c.post("/search", json={"text": "退款", "mode": "bm25"})).status_code == 200

    run(main())


class SlowStore(InMemoryFaqStore):
    """Upserts take a while and record how many ran at once (Milvus' duplicate check is check-then-write)."""

    def __init__(self, dim):
        super().__init__(dim)
        self.running = self.most = 0
        self.guard = threading.Lock()

    def upsert(self, entries, vectors):
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)
            return super().upsert(entries, vectors)
        finally:
            with self.guard:
                self.running -= 1


def test_concurrent_writes_are_serialised():
    async def main():
        store = SlowStore(DIM)
        async with admin_api(store=store) as c:
            bodies = [faq(f"f-{i}", "怎么退款" if i < 3 else f"问题{i}") for i in range(6)]
            responses = await asyncio.gather(*(c.post("/faqs", json=b) for b in bodies))
            codes = sorted(r.status_code for r in responses)
            assert codes == [201, 201, 201, 201, 409, 409]  # one of the three "怎么退款" wins
            assert store.most == 1 and store.count() == 4

    run(main())


def test_health_and_settings_auth():
    async def main():
        async with admin_api() as c:
            await c.post("/faqs", json=faq("f-1", "问题", "问法二"))
            health = (await c.get("/health")).json()
            assert health["ok"] is True and health["faqs"] == 1 and health["rows"] == 2
            assert health["maintenance"] is False and health["reindex"] == "idle"

        settings = FaqAdminSettings(api_key_sha256=f"{READER_DIGEST},{DIGEST}")
        app = FastAPI()
        app.include_router(
            create_admin_router(InMemoryFaqStore(DIM), EMB, settings.auth(), settings=settings)
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.get("/faqs", headers=AUTH)).status_code == 200
            assert (await client.get("/faqs")).status_code == 401
        empty = FaqAdminSettings()
        app = FastAPI()
        app.include_router(create_admin_router(InMemoryFaqStore(DIM), EMB, empty.auth(), settings=empty))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            assert (await client.get("/faqs", headers=AUTH)).status_code == 401  # no keys: nobody gets in

    run(main())


# ── embedded milvus-lite ────────────────────────────────────────────────────────────────────────────


def test_milvus_lite_writes_are_searchable_within_a_second_and_reindex_switches(tmp_path):
    from services.faq.milvus_store import MilvusFaqStore
    from services.faq.settings import FaqSettings

    uri = str(tmp_path / "faq.db")
    faq_settings = FaqSettings(uri=uri, embedder_dim=DIM, embedder_version=EMB.version)
    store = MilvusFaqStore(uri, "faq", DIM, embedder_version=EMB.version)
    reindexer = milvus_reindexer(faq_settings, EMB, drop_grace_s=0)

    async def visible_within(c, text, predicate, seconds=1.0):
        started = time.monotonic()
        while True:
            hits = (await c.post("/search", json={"text": text, "top_k": 3, "mode": "hybrid"})).json()["hits"]
            if predicate([h["faq_id"] for h in hits]):
                return time.monotonic() - started
            assert time.monotonic() - started < seconds, f"not visible to search within {seconds} s"
            await asyncio.sleep(0.02)

    async def main():
        async with admin_api(store=store, reindexer=reindexer) as c:
            lines = DEMO_TEXT.splitlines()[:20]
            assert (
                await c.post("/import", content="\n".join(lines).encode(), headers=JSONL)
            ).status_code == 200
            r = await c.post("/faqs", json=faq("f-new", "门店几点开门", "线下门店营业时间"))
            assert r.status_code == 201
            await visible_within(c, "门店几点开门", lambda ids: ids[:1] == ["f-new"])
            assert (await c.get("/faqs/f-new")).json()["alternatives"] == ["线下门店营业时间"]
            assert (await c.delete("/faqs/f-new")).status_code == 204
            await visible_within(c, "门店几点开门", lambda ids: "f-new" not in ids)

            before = store.physical_collection
            r = await c.post("/reindex", params={"wait": True})
            assert r.status_code == 200, r.text
            report = r.json()["report"]
            assert report["previous"] == before and report["faqs"] == 20 and report["left_behind"] == []
            assert store.physical_collection == report["collection"] != before
            assert (await c.get("/faqs")).json()["total"] == 20
            hits = (await c.post("/search", json={"text": "能不能发顺丰"})).json()["hits"]
            assert hits[0]["faq_id"] == "faq-004"
            assert (await c.post("/faqs", json=faq("f-after", "门店几点开门"))).status_code == 201
            await visible_within(c, "门店几点开门", lambda ids: ids[:1] == ["f-after"])

    try:
        run(main())
    finally:
        store.close()


def test_import_entries_match_the_domain_reader(tmp_path):
    """The JSONL importer reads faq.jsonl exactly as `read_faq_jsonl` does."""
    from services.faq.admin_formats import parse_import
    from services.faq.domain import entry_of

    parsed = [entry_of(r.record) for r in parse_import(DEMO_TEXT, "jsonl")]
    from services.faq.testing import load_demo_kb

    strip = FaqEntry.model_dump
    assert [strip(e, exclude={"updated_at"}) for e in parsed] == [
        strip(e, exclude={"updated_at"}) for e in load_demo_kb()
    ]
