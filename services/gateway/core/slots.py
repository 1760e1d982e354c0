"""Slots of a customer turn (order number, phone) found by rule, and the personal numbers that are never kept.

Recognition runs in this order over the normalised text (full-width digits are already half-width):

1. **Personal numbers** (`personal_numbers`): a resident ID card number (18 characters, 17 digits and a digit
   or X, a real birth date and the GB 11643 mod-11 check digit) is `resident_id`; a number of 13-19 digits
   (single spaces or `-` between groups allowed) passing the Luhn check is `bank_card`. Checks by
   python-stdnum (`stdnum.cn.ric`, `stdnum.luhn`). They are never slotted, stored or echoed; the chat answer
   lists their kinds in `pii_detected` so the app can tell the customer not to send them.
2. **Card- and ID-shaped numbers**: 17 digits and an X are never an order number; 13-19 plain digits (dash
   or space groups too) match the default pattern only after a `20yyMMdd` date, checksum or not (a mistyped
   card is still a card).
3. **Phone**: a mainland mobile number, kept masked (`138****5678`).
4. **Order number**: a token (`[A-Za-z0-9-]+`) after an order keyword (`订单号 …`, `单号：…`, `order no. …`),
   or a bare number of at least 10 digits, that matches the shop's format (`order_no_pattern`, a full match)
   and overlaps none of the above.

`DEFAULT_ORDER_NO_PATTERN` accepts formats no card or ID number has: 6-12 digits (`88776655`,
`123456789012`), a `yyyyMMdd` date then 4-11 digits (`2024060112345`: no card issuer or ID region code
starts with 20), letters then digits (`A2024-778899`, `SO-20240601-0001`), or `yyMMdd-` and 15 digits
(`230512-123456789012345`). A shop with another format sets its own pattern (e.g. `\\d{18,19}` for long
plain numbers). Whatever the pattern, a Luhn-valid 13-19 digit number or a valid ID number is refused: it
cannot be told apart from a card (about one long order number in ten; the agent asks for it instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from stdnum import luhn
from stdnum.cn import ric

from services.gateway.edge.redaction import mask_phone

DEFAULT_ORDER_NO_PATTERN = (
    r"\d{6,12}"  # short plain numbers (JD-style 11-12 digits)
    r"|20\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{4,11}"  # yyyyMMdd + sequence, 12-19 digits
    r"|[A-Za-z]{1,6}-?\d[\d-]{4,30}"  # letters then digits (A2024-778899, SO-20240601-0001)
    r"|\d{6}-\d{15}"  # yyMMdd-15 digits (Pinduoduo)
)
RESIDENT_ID, BANK_CARD = "resident_id", "bank_card"

_ID = re.compile(r"(?<![0-9])\d{17}[\dXx](?![0-9A-Za-z])")
_CARD = re.compile(r"(?<![0-9])\d(?:[ -]?\d){12,18}(?![0-9])")
_PHONE = re.compile(r"(?<![0-9])(?:\+?86[- ]?)?(1[3-9]\d[- ]?\d{4}[- ]?\d{4})(?![0-9])")
_ORDER_KEYWORD = re.compile(
    r"(?:订单|单号|order)\s*(?:号|编号|号码|no\.?|number|id)?[\s:：#是为]{0,4}(?=[A-Za-z0-9])", re.I
)
_TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_BARE_ORDER = re.compile(r"(?<![0-9A-Za-z-])\d{10,}(?![0-9A-Za-z-])")
_ID_SHAPED = re.compile(r"\d{17}[Xx]")


def is_resident_id(number: str) -> bool:
    """18 characters with a real birth date and the GB 11643 mod-11 check digit (X for 10)."""
    number = number.upper()
    if not re.fullmatch(r"\d{17}[\dX]", number) or ric.calc_check_digit(number) != number[17]:
        return False
    try:
        born = ric.get_birth_date(number)
    except Exception:  # noqa: BLE001 - stdnum raises its own ValidationError for an impossible date
        return False
    return date(1870, 1, 1) <= born <= date.today()


def is_bank_card(digits: str) -> bool:
    """13-19 digits passing the Luhn check."""
    return digits.isdigit() and 13 <= len(digits) <= 19 and luhn.is_valid(digits)


def personal_numbers(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every resident ID and bank card number in `text`."""
    found = [(RESIDENT_ID, m.start(), m.end()) for m in _ID.finditer(text) if is_resident_id(m.group(0))]
    for m in _CARD.finditer(text):
        if any(a < m.end() and m.start() < b for _, a, b in found):
            continue
        if is_bank_card(re.sub(r"[ -]", "", m.group(0))):
            found.append((BANK_CARD, m.start(), m.end()))
    return sorted(found, key=lambda f: f[1])


@dataclass(frozen=True)
class TurnSlots:
    """What one customer text holds: slots to keep and the kinds of personal numbers seen (never kept)."""

    slots: dict[str, str] = field(default_factory=dict)
    pii: tuple[str, ...] = ()


class SlotExtractor:
    """Slots by rule with the shop's order-number format (`order_no_pattern`, matched against a whole token)."""

    def __init__(self, order_no_pattern: str = DEFAULT_ORDER_NO_PATTERN):
        try:
            self._order = re.compile(order_no_pattern)
        except re.error as e:
            raise ValueError(
                f"order_no_pattern (KEFU_GATEWAY_ORDER_NO_PATTERN) is not a valid regular expression: {e}"
            ) from None

    def extract(self, text: str) -> TurnSlots:
        pii = personal_numbers(text)
        taken = [(a, b) for _, a, b in pii]
        slots: dict[str, str] = {}
        phones = list(_PHONE.finditer(text))
        if phones:
            slots["phone"] = mask_phone(phones[-1].group(1))
        taken += [(p.start(), p.end()) for p in phones]
        order = None
        for kw in _ORDER_KEYWORD.finditer(text):
            token = _TOKEN.match(text, kw.end())
            if token and self._is_order(token.group(0), token.start(), token.end(), taken):
                order = token.group(0)
                break
        if order is None:
            for m in _BARE_ORDER.finditer(text):
                if self._is_order(m.group(0), m.start(), m.end(), taken):
                    order = m.group(0)  # the last one wins
        if order is not None:
            slots["order_no"] = order
        return TurnSlots(slots, tuple(dict.fromkeys(kind for kind, _, _ in pii)))

    def _is_order(self, token: str, start: int, end: int, taken: list[tuple[int, int]]) -> bool:
        if any(a < end and start < b for a, b in taken):
            return False  # a phone, ID or card number, or glued to one
        if _ID_SHAPED.fullmatch(token) or is_resident_id(token) or is_bank_card(token.replace("-", "")):
            return False
        return self._order.fullmatch(token) is not None


DEFAULT_EXTRACTOR = SlotExtractor()


def extract_slots(text: str) -> dict[str, str]:
    """Slots of `text` with the default order-number format."""
    return DEFAULT_EXTRACTOR.extract(text).slots
