"""Resident ID and bank card numbers are never slotted, stored or echoed; an order number needs the shop's
format (`order_no_pattern`, KEFU_GATEWAY_ORDER_NO_PATTERN). Unit tests of `slots.py`, then the chat API."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from services.gateway.core.slots import (
    DEFAULT_ORDER_NO_PATTERN,
    SlotExtractor,
    extract_slots,
    is_bank_card,
    is_resident_id,
    personal_numbers,
)
from services.gateway.settings import GatewaySettings
from services.gateway.state.sessions import SessionKey
from services.gateway.state.sessions import extract_slots as session_slots  # what Session.add_turn used
from tests.gateway_app import build, headers

ID_X = "11010519491231002X"  # valid GB 11643 check digit (X = 10)
ID_DIGIT = "440524188001010014"  # valid, check digit 4
CARD = "6222021234567890128"  # 19-digit UnionPay-shaped, Luhn-valid
VISA = "4111111111111111"
LUHN_BAD = "6222021234567890127"  # one digit off: Luhn-invalid, still card-shaped


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        (ID_X, True),
        (ID_X.lower(), True),
        (ID_DIGIT, True),
        ("110105194912310021", False),  # wrong check digit
        ("11010519491231002Y", False),
        ("110105194913310028", False),  # month 13
        ("110105290001010010", False),  # born in 2900
        ("1101051949123100", False),  # too short
    ],
)
def test_resident_id_check_digit(number, valid):
    assert is_resident_id(number) is valid


def test_bank_card_is_luhn_and_length():
    assert is_bank_card(CARD) and is_bank_card(VISA)
    assert not is_bank_card(LUHN_BAD)
    assert not is_bank_card("4111111111111111111111")  # 22 digits
    assert not is_bank_card("79927398713")  # Luhn-valid but 11 digits


@pytest.mark.parametrize("number", [CARD, ID_X, LUHN_BAD, "1234567890123", VISA])
def test_issue_cases_are_never_an_order_number(number):
    assert "order_no" not in session_slots(f"订单号 {number}")
    assert "order_no" not in session_slots(f"{number} 这个到哪了")


@pytest.mark.parametrize(
    ("text", "slots", "pii"),
    [
        # the issue's cases: none of these is an order number
        (f"订单号 {CARD}", {}, ("bank_card",)),
        (f"订单号 {ID_X}", {}, ("resident_id",)),
        (f"订单号 {LUHN_BAD}", {}, ()),  # a 13-19 digit number that looks like a card, checksum or not
        ("订单号 1234567890123", {}, ()),
        (f"订单号{ID_X}，卡号 6222 0212 3456 7890 128", {}, ("resident_id", "bank_card")),
        (f"身份证{ID_DIGIT} 订单号 88776655", {"order_no": "88776655"}, ("resident_id",)),
        (f"{CARD}", {}, ("bank_card",)),  # bare
        (f"我的卡 {VISA} 订单 A2024-778899", {"order_no": "A2024-778899"}, ("bank_card",)),
        # the shop's formats (the default pattern)
        ("订单号 123456789012 还没发货", {"order_no": "123456789012"}, ()),
        ("订单号2024060112345", {"order_no": "2024060112345"}, ()),  # yyyyMMdd + sequence
        ("order no. SO-20240601-0001", {"order_no": "SO-20240601-0001"}, ()),
        ("订单号 230512-123456789012345", {"order_no": "230512-123456789012345"}, ()),
        ("订单号 13812345678", {"phone": "138****5678"}, ()),  # a phone is never the order number
        ("订单号 12345", {}, ()),  # too short for any format
    ],
)
def test_personal_numbers_are_recognised_first(text, slots, pii):
    found = SlotExtractor().extract(text)
    assert found.slots == slots and found.pii == pii
    for number in (CARD, ID_X, ID_DIGIT, VISA, LUHN_BAD):
        assert number not in "".join(found.slots.values())


def test_luhn_valid_date_shaped_number_is_refused_even_in_the_shop_format():
    # 2023112298765 fits yyyyMMdd+sequence but passes Luhn: it cannot be told apart from a card
    assert extract_slots("订单号2023112298765") == {}
    assert extract_slots("订单号2023112345678") == {"order_no": "2023112345678"}


def test_a_shop_pattern_replaces_the_default_but_never_admits_personal_numbers():
    taobao = SlotExtractor(r"\d{18,19}")
    assert taobao.extract("订单号 2067386372960638921").slots == {"order_no": "2067386372960638921"}
    assert taobao.extract(f"订单号 {CARD}").slots == {}  # Luhn-valid: still a card
    assert taobao.extract(f"订单号 {ID_DIGIT}").slots == {}  # a valid ID number
    assert taobao.extract("订单号 88776655").slots == {}  # not this shop's format
    assert SlotExtractor(r"[0-9X]{18}").extract("订单号 11010519491231002X").slots == {}


def test_personal_numbers_spans():
    text = f"卡{CARD}身份证{ID_X}"
    kinds = [(k, text[a:b]) for k, a, b in personal_numbers(text)]
    assert kinds == [("bank_card", CARD), ("resident_id", ID_X)]


def test_invalid_pattern_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="KEFU_GATEWAY_ORDER_NO_PATTERN"):
        SlotExtractor("(unclosed")


def test_pattern_setting_from_the_environment(monkeypatch):
    assert GatewaySettings().order_no_pattern == DEFAULT_ORDER_NO_PATTERN
    monkeypatch.setenv("KEFU_GATEWAY_ORDER_NO_PATTERN", r"KF\d{8}")
    assert GatewaySettings().order_no_pattern == r"KF\d{8}"


@pytest.mark.asyncio
async def test_chat_never_keeps_or_echoes_personal_numbers(tmp_path, caplog):
    app, _, _ = build(tmp_path)
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as client:
        bodies = []
        for i, text in enumerate(
            [f"订单号 {CARD}", f"订单号 {ID_X}", f"订单号 {LUHN_BAD}", "订单号 6222 0212 3456 7890 128"]
        ):
            r = client.post("/v1/chat", json={"session_id": f"p-{i}", "text": text}, headers=headers())
            assert r.status_code == 200, r.text
            bodies.append(r.json())
        assert all("order_no" not in b["slots"] for b in bodies)
        assert [b["pii_detected"] for b in bodies] == [["bank_card"], ["resident_id"], [], ["bank_card"]]
        sessions = app.state.orchestrator.sessions
        stored = [(await sessions.get(SessionKey("demo", f"p-{i}"))).to_json() for i in range(4)]
        ok = client.post(
            "/v1/chat", json={"session_id": "p-9", "text": "订单号 A2024-778899"}, headers=headers()
        ).json()
        assert ok["slots"] == {"order_no": "A2024-778899"} and ok["pii_detected"] == []
    for number in (CARD, ID_X, LUHN_BAD, "6222 0212 3456 7890 128"):
        assert all(number not in str(b) for b in bodies)  # the reply
        assert all(number not in s for s in stored)  # the session store (digests of redacted text)
        assert number not in caplog.text  # the logs
