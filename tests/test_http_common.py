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
