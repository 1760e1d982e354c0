"""The request-id rule and the validation-error wording every service shares (services/common/http_errors.py)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel, Field, ValidationError

from services.common.http_errors import describe_validation, request_id


@pytest.mark.parametrize("given", ["abc-123", "a" * 128, "trace:1/2+3=4.5_6"])
def test_a_plain_caller_request_id_is_kept(given):
    assert request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "a" * 129, "has space", "new\nline", "<script>", "中文"])
def test_anything_else_gets_a_fresh_uuid(given):
    rid = request_id(given)
    assert rid != given and uuid.UUID(rid).version == 4


class Body(BaseModel):
    texts: list[str] = Field(max_length=20)
    top_k: int = Field(ge=1)


def test_validation_errors_name_fields_never_the_input():
    secret = "我的手机号13812345678"
    with pytest.raises(ValidationError) as e:
        Body(texts=[secret, 7], top_k=0)
    text = describe_validation(e.value)
    assert text.startswith("invalid request: texts.1: ") and "top_k: " in text
    assert "13812345678" not in text


def test_at_most_ten_problems_are_listed():
    with pytest.raises(ValidationError) as e:
        Body(texts=list(range(15)), top_k=1)
    text = describe_validation(e.value, "invalid inference request")
    assert text.startswith("invalid inference request: ") and text.count("texts.") == 10
    assert text.endswith("(and 5 more)")


def test_the_admin_mapper_renders_the_platform_auth_errors_the_gateway_raises():
    """One scheme: the gateway's authentication raises services/common/errors.py classes into the mounted FAQ
    admin router, whose mapper renders them as they are (no conversion layer between two error types)."""
    import json

    from services.common.errors import Forbidden, TooManyRequests, Unauthenticated
    from services.faq.admin_http import error_response
    from services.gateway.core import errors as gateway_errors

    assert gateway_errors.Unauthenticated is Unauthenticated  # the gateway raises the platform's classes

    throttled = error_response(
        TooManyRequests("auth_throttled", "too many refused credentials", retry_after_s=3), "r1"
    )
    body = json.loads(throttled.body)["error"]
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "3"
    assert body == {"code": "auth_throttled", "message": "too many refused credentials", "request_id": "r1"}
    refused = error_response(Unauthenticated("unauthorized", "invalid API key"), "r2")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert error_response(Forbidden("forbidden", "no admin scope"), "r3").status_code == 403
