"""The gateway's and the worker's OpenAPI documents are the committed copies in docs/openapi/, byte for byte:
a refactor (issue 13 moved every gateway module) changes no route, schema, parameter or example without
someone re-generating the copies on purpose (`python -m tests.openapi_docs docs/openapi`)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.openapi_docs import dump, gateway_openapi, worker_openapi

DOCS = Path(__file__).resolve().parents[1] / "docs" / "openapi"


@pytest.mark.parametrize(("name", "build"), [("gateway", gateway_openapi), ("worker", worker_openapi)])
def test_openapi_document_is_the_committed_one(name, build):
    committed = (DOCS / f"{name}.json").read_text("utf-8")
    now = dump(build())
    diff = "".join(difflib.unified_diff(committed.splitlines(True), now.splitlines(True), n=1))
    assert now == committed, f"{name} OpenAPI changed:\n{diff[:3000]}"
